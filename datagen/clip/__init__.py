"""CLIP, shared by Stage 3 (the filter's scores) and Stage 4 (the editor's CLIP evaluation):
the open_clip factory (``loading``) and the four metrics as pure functions (``metrics``)."""
