"""Stage 4: the InstructPix2Pix editor.

- ``model.editor``: the library — load an editor, sample edits with dual classifier-free guidance,
  edit image files. What ``edit``, ``serve``, evaluation and training's sample grids share.
- ``model.training``: the training objective, the pairs it reads, the resumable loop, ``editsynth train``.
- ``model.evaluation``: the CLIP sweep against SDEdit, the shapes-world oracle eval, comparing evals.
- ``model.serving``: the web UI and HTTP API, ``editsynth edit`` and ``editsynth serve``.
Imports run one way: serving, evaluation -> training -> editor.
"""
