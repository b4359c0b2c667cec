"""The shapes world: procedural scenes, a caption/edit grammar, an exact oracle, tiny models."""
