"""The shapes lab: trains, evaluates and publishes the tiny models the shapes world ships, writes their
model card, and measures what each stage adds on a finished run (``stage_value``).

It sits above the stages and the editor (it imports both); the shapes world itself
(``datagen.shapes``) imports neither.
"""
