"""Stage 1: source captions -> (input caption, instruction, output caption) triples.

sources.py reads captions, prompts.py builds few-shot prompts from the shipped seed triples and
parses replies, openai_backend.py / grammar_backend.py turn captions into drafts,
validation.py applies the original rejections, stage.py writes the shards.
"""
