"""Stage 4: the InstructPix2Pix editor — set-up, training, evaluation, sampling, serving."""
