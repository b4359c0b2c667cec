"""Stage 2: Prompt-to-Prompt candidate pairs on any Stable Diffusion checkpoint.

loading.py    the pipeline factory (hub id, local diffusers dir, or the shipped "shapes" model)
alignment.py  BPE-aware word alignment of two captions (swap / refine), pure functions
attention.py  attention sharing as diffusers attention processors (modes self, cross, none)
sampler.py    the batched two-branch sampler: many candidates per UNet call, shared rows once
specs.py      candidate settings keyed by (run seed, triple id, index); chunking; ids
render.py     candidates -> images: text, alignment, sampling, decoding, PNG/JPEG bytes
stage.py      the "render" stage on the run store (datagen/run.py protocol); render_one
reference.py  THE SLOW REFERENCE (one candidate at a time, explicit maps): tests and bench only
cli.py        `editsynth render-one`
"""
