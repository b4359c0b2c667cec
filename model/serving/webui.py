"""The web UI of ``editsynth serve`` (Gradio): upload, instruct, compare, chain, undo, download.

Each edit applies to the latest image of the session's history, so several instructions make
a chain; Undo steps back one edit; a new upload starts a new history. The chain runs at the
model's edit size (no resize between steps) and is shown and downloaded at the upload's size.
Edits go through the server's EditWorker, the same bounded queue as the HTTP API.
"""
from __future__ import annotations

import random
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from model.editor.images import ImageRejected, fit_for_edit, read_upload

MAX_HISTORY = 24          # original + 23 edits per session; older edits drop off
KEEP_DOWNLOADS = 256      # PNG files kept for the Download button, oldest deleted first


@dataclass
class Step:
    image: Image.Image    # at the model's edit size
    caption: str
    source: str           # the upload path the history started from


def build_ui(worker, config, resolution: int):
    import gradio as gr

    defaults = config.defaults
    multiple = worker.editor.size_multiple
    download_dir = Path(tempfile.mkdtemp(prefix="editsynth-downloads-"))

    def shown(step: Step, size: tuple[int, int]) -> Image.Image:
        return step.image if step.image.size == size else step.image.resize(size, Image.Resampling.LANCZOS)

    def save_download(im: Image.Image) -> str:
        old = sorted(download_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - KEEP_DOWNLOADS + 1)]:
            p.unlink(missing_ok=True)
        path = download_dir / f"edited-{uuid.uuid4().hex[:8]}.png"
        im.save(path)
        return str(path)

    def render(history: list[Step], size):
        """Outputs for a history: before/after, gallery, download button, status line."""
        if len(history) < 2:
            status = "No edits yet: write an instruction and press Edit." if history else \
                "Upload an image and write an instruction."
            return None, [], gr.DownloadButton(value=None, interactive=False), status
        before, after = shown(history[-2], size), shown(history[-1], size)
        gallery = [(shown(s, size), f"{i}: {s.caption}") for i, s in enumerate(history)]
        status = f"{len(history) - 1} edit(s); last: \u201c{history[-1].caption}\u201d"
        return (before, after), gallery, gr.DownloadButton(value=save_download(after), interactive=True), status

    def edit(upload: str | None, instruction: str, text_guidance: float, image_guidance: float, steps: float,
             seed: float, randomise: bool, history: list[Step] | None, size, progress=gr.Progress()):
        if not upload:
            raise gr.Error("Upload an image first.")
        if not instruction or not instruction.strip():
            raise gr.Error("Write an instruction, e.g. \u201cmake the circle red\u201d.")
        history = list(history or [])
        if not history or history[0].source != upload:
            try:
                original = read_upload(Path(upload).read_bytes(), config.limits)
            except ImageRejected as e:
                raise gr.Error(str(e)) from None
            size = original.size
            history = [Step(fit_for_edit(original, resolution, multiple), "original", upload)]
        seed = random.randrange(2**31) if randomise else int(seed or 0)
        steps = max(1, min(int(steps), config.max_steps))
        try:
            settings = replace(defaults, text_guidance=float(text_guidance), image_guidance=float(image_guidance),
                               steps=steps, resolution=resolution)
            [result] = worker.edit([history[-1].image], [instruction.strip()], settings, [seed],
                                   timeout=config.request_timeout_s,
                                   progress=lambda k, n: progress((k, n), desc="sampling"))
        except TimeoutError:
            raise gr.Error("The server is busy: the edit did not finish in time. Try again.") from None
        except Exception as e:  # QueueFull, bad settings, a failed edit: tell the user, keep the session
            raise gr.Error(str(e)) from None
        # Keep the original; beyond MAX_HISTORY the oldest edits drop off.
        history = history[:1] + (history[1:] + [Step(result, instruction.strip(), upload)])[1 - MAX_HISTORY:]
        return (*render(history, size), seed, history, size)

    def undo(history: list[Step] | None, size):
        history = list(history or [])[:-1] if history and len(history) > 1 else list(history or [])
        return (*render(history, size), history)

    def start_over():
        return (*render([], None), [], None)

    with gr.Blocks(title="editsynth — instruction-based image editing") as ui:
        gr.Markdown(f"## editsynth editor\nModel `{worker.editor.name}` on {worker.editor.device}. Edits chain: "
                    "each instruction applies to the latest result. Undo steps back one edit.")
        history = gr.State([], time_to_live=3600)
        size = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.Image(label="Input image", type="filepath", image_mode=None, sources=["upload"],
                                  elem_id="input-image", height=300)
                instruction = gr.Textbox(label="Instruction", placeholder="make the circle red", lines=1,
                                         elem_id="instruction")
                with gr.Row():
                    run = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    undo_button = gr.Button("Undo", elem_id="undo-button")
                    reset = gr.Button("Start over", elem_id="reset-button")
                with gr.Row():
                    # Ranges that hold the editor's own defaults (edit_config.json) with room above.
                    text_guidance = gr.Slider(0, max(20, 2 * defaults.text_guidance), value=defaults.text_guidance,
                                              step=0.1, label="Text guidance", elem_id="text-guidance")
                    image_guidance = gr.Slider(0, max(5, 2 * defaults.image_guidance), value=defaults.image_guidance,
                                               step=0.05, label="Image guidance", elem_id="image-guidance")
                with gr.Row():
                    steps = gr.Slider(1, config.max_steps, value=min(defaults.steps, config.max_steps), step=1,
                                      label="Steps", elem_id="steps")
                    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed", elem_id="seed")
                    randomise = gr.Checkbox(value=False, label="Randomise seed", elem_id="randomise")
            with gr.Column(scale=1):
                compare = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="before-after",
                                         height=300, interactive=False)
                status = gr.Markdown("Upload an image and write an instruction.", elem_id="status")
                download = gr.DownloadButton("Download PNG", interactive=False, elem_id="download")
                gallery = gr.Gallery(label="History (chained edits)", format="png", columns=6, fit_columns=False,
                                     object_fit="contain", height=150, interactive=False, elem_id="history")

        outputs = [compare, gallery, download, status]
        run.click(edit, [upload, instruction, text_guidance, image_guidance, steps, seed, randomise, history, size],
                  outputs + [seed, history, size], api_name="edit", concurrency_limit=2)
        instruction.submit(edit, [upload, instruction, text_guidance, image_guidance, steps, seed, randomise,
                                  history, size], outputs + [seed, history, size], api_name=False)
        undo_button.click(undo, [history, size], outputs + [history], api_name="undo")
        reset.click(start_over, None, outputs + [history, size], api_name=False)
        upload.upload(start_over, None, outputs + [history, size], api_name=False)
    ui.queue(max_size=config.max_queue + 2, default_concurrency_limit=2)
    return ui
