"""Stage 3: CLIP scoring, selection, threshold audit and dataset export."""
