"""The InstructPix2Pix editor as a library: load (``loading``), sample (``sampling``), read images
(``images``), edit image files (``files``)."""
