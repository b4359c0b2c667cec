"""``editsynth serve``: one editor behind a web UI (Gradio) and an HTTP API (FastAPI), one server.

All edits, from the API and the UI alike, go through one EditWorker: a single thread that owns
the model and a bounded queue in front of it. A full queue answers 503 at once (with
Retry-After); a request that waits too long answers 503 too; nothing hangs. Uploads are checked
before decoding (model.editor.images.read_upload) and a bad request gets a 4xx naming the problem: the
field and its limit, never the whole input echoed back (a 10,000-character instruction would
come back as a 10 KB error otherwise).

Routes: /api/edit (multipart, PNG or base64 back), /api/edit/json (JSON with base64), /api/health,
/api/model, /docs (OpenAPI), /ui (the web UI; / redirects there).
"""
import asyncio
import base64
import binascii
import io
import logging
import math
import queue
import random
import threading
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from model.editor.images import ImageRejected, UploadLimits, read_upload
from model.editor.loading import Editor
from model.editor.sampling import EditSettings, edit_images

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 1000
MAX_GUIDANCE = 30
ECHO_LIMIT = 80   # a 422 shows the offending value only when its text is at most this long


class QueueFull(RuntimeError):
    """The edit queue is full: the caller should try again later."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"           # loopback unless asked: the UI runs code on a GPU for anyone
    port: int = 7860
    share: bool = False               # a public Gradio share link, only when asked for
    max_queue: int = 8                # edits waiting (not counting the one running)
    request_timeout_s: float = 300.0  # longest a request waits for its edit
    max_steps: int = 200
    max_variations: int = 4
    limits: UploadLimits = field(default_factory=UploadLimits)
    defaults: EditSettings = field(default_factory=EditSettings)

    def __post_init__(self):
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.defaults.steps > self.max_steps:
            raise ValueError(f"default steps {self.defaults.steps} exceed max_steps {self.max_steps}")


@dataclass
class EditJob:
    images: list
    instructions: list
    settings: EditSettings
    seeds: list
    progress: object = None
    future: Future = field(default_factory=Future)


class EditWorker:
    """One thread owns the model; jobs wait in a bounded queue in front of it."""

    def __init__(self, editor: Editor, max_queue: int = 8):
        self.editor = editor
        self.capacity = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._running = 0
        self._thread = threading.Thread(target=self._loop, name="edit-worker", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._running

    def submit(self, images, instructions, settings: EditSettings, seeds, progress=None) -> Future:
        """Queue an edit; its Future gives the edited images. Raises QueueFull at once when full."""
        job = EditJob(list(images), list(instructions), settings, list(seeds), progress)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the edit queue is full ({self.capacity} waiting); try again shortly") from None
        return job.future

    def edit(self, images, instructions, settings, seeds, timeout: float, progress=None) -> list[Image.Image]:
        """Blocking submit-and-wait (the web UI's path); raises QueueFull or TimeoutError."""
        future = self.submit(images, instructions, settings, seeds, progress)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up while it waited
            self._running = 1
            try:
                job.future.set_result(edit_images(self.editor, job.images, job.instructions, job.settings,
                                                  job.seeds, progress=job.progress))
            except Exception as e:  # noqa: BLE001 — the job's caller gets it; the worker lives on
                log.exception("edit failed")
                job.future.set_exception(e)
            finally:
                self._running = 0


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def create_app(editor: Editor, config: ServeConfig | None = None, with_ui: bool = True):
    """The FastAPI app: the HTTP API, with the Gradio UI mounted at /ui."""
    config = config or ServeConfig()
    # Guidance scales left open take the editor's own (edit_config.json), else the paper's.
    config = replace(config, defaults=config.defaults.for_editor(editor))
    worker = EditWorker(editor, config.max_queue)
    # The most an edit request may carry: the image as base64 (4/3) plus the form fields.
    body_limit = config.limits.max_bytes * 4 // 3 + 65536
    d = config.defaults
    resolution = d.resolution or editor.native_resolution

    class Health(BaseModel):
        status: Literal["ok"] = "ok"
        model: str
        queue_pending: int
        queue_capacity: int

    class ModelInfo(BaseModel):
        name: str
        device: str
        dtype: str
        resolution: int
        size_multiple: int
        scheduler: str
        compiled: str
        defaults: dict
        max_steps: int
        max_upload_bytes: int
        max_pixels: int
        max_aspect_ratio: float

    class EditJSONRequest(BaseModel):
        image_base64: str = Field(description="the input image file (PNG, JPEG, WebP, ...), base64")
        instruction: str = Field(max_length=MAX_INSTRUCTION_CHARS, description="the edit to make; not blank")
        text_guidance: float = Field(d.text_guidance, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
        image_guidance: float = Field(d.image_guidance, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False)
        steps: int = Field(d.steps, ge=1, le=config.max_steps)
        seed: int | None = Field(None, ge=0, lt=2**63, description="omit for a random seed")
        variations: int = Field(1, ge=1, le=config.max_variations)

    class EditJSONResponse(BaseModel):
        images_base64: list[str] = Field(description="PNG files, base64; one per variation")
        seeds: list[int]
        width: int
        height: int

    app = FastAPI(
        title="editsynth editor",
        description="Instruction-based image editing (InstructPix2Pix) with one model and a bounded queue. "
                    "A full queue answers 503 with Retry-After; bad uploads get a 4xx naming the problem.",
        version="1",
    )
    app.state.worker = worker

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):
        # Refuse before reading the body when it says it is too long; a body without a length
        # (chunked) is counted as it arrives by the routes' max_body_size.
        length = request.headers.get("content-length")
        if request.url.path.startswith("/api/") and length and length.isdigit() and int(length) > body_limit:
            return JSONResponse({"detail": f"request body of {int(length):,} bytes exceeds the upload limit "
                                           f"of {config.limits.max_bytes:,} bytes"}, status_code=413)
        return await call_next(request)

    allowed = {"instruction": f"1 to {MAX_INSTRUCTION_CHARS:,} characters, not all spaces",
               "text_guidance": f"a number from 0 to {MAX_GUIDANCE}",
               "image_guidance": f"a number from 0 to {MAX_GUIDANCE}",
               "steps": f"a whole number from 1 to {config.max_steps}", "seed": "a whole number from 0 to 2**63 - 1",
               "variations": f"a whole number from 1 to {config.max_variations}"}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, e: RequestValidationError):
        return JSONResponse({"detail": [field_error(err, allowed) for err in e.errors()]}, status_code=422)

    @app.exception_handler(ImageRejected)
    async def _rejected(_request, e: ImageRejected):
        return JSONResponse({"detail": str(e)}, status_code=e.http_status)

    @app.exception_handler(QueueFull)
    async def _full(_request, e: QueueFull):
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "5"})

    async def run_edit(data: bytes, instruction: str, text_guidance: float, image_guidance: float,
                       steps: int, seed: int | None, variations: int) -> tuple[list[Image.Image], list[int]]:
        if not instruction.strip():
            raise HTTPException(422, [{"loc": ["body", "instruction"], "type": "blank_instruction",
                                       "msg": "instruction: empty or only spaces; send the edit to make, e.g. "
                                              f"'make it snowy' ({allowed['instruction']})"}])
        image = await run_in_threadpool(read_upload, data, config.limits)
        settings = replace(d, text_guidance=text_guidance, image_guidance=image_guidance, steps=steps,
                           resolution=resolution)
        seed = random.randrange(2**31) if seed is None else seed
        seeds = [seed + k for k in range(variations)]
        future = worker.submit([image] * variations, [instruction] * variations, settings, seeds)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the edit did not finish within {config.request_timeout_s:g} s; "
                                     "the server is busy, try again later", headers={"Retry-After": "30"})
        except ImageRejected as e:
            raise HTTPException(e.http_status, str(e)) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        except Exception as e:  # noqa: BLE001
            raise HTTPException(500, f"the edit failed: {type(e).__name__}: {e}") from None
        return results, seeds

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/ui/" if with_ui else "/docs")

    @app.get("/api/health", response_model=Health, summary="Is the server up, and how full is its queue")
    def health():
        return Health(model=editor.name, queue_pending=worker.pending, queue_capacity=worker.capacity)

    @app.get("/api/model", response_model=ModelInfo, summary="The model served and its limits")
    def model_info():
        return ModelInfo(name=editor.name, device=str(editor.device), dtype=str(editor.dtype).replace("torch.", ""),
                         resolution=resolution, size_multiple=editor.size_multiple,
                         scheduler=d.scheduler, compiled=editor.compiled, defaults=asdict(d),
                         max_steps=config.max_steps, max_upload_bytes=config.limits.max_bytes,
                         max_pixels=config.limits.max_pixels, max_aspect_ratio=config.limits.max_aspect_ratio)

    @app.post("/api/edit", summary="Edit one image (multipart upload)", max_body_size=body_limit,
              responses={200: {"content": {"image/png": {}}, "description": "the edited image (PNG), or JSON "
                               "with base64 PNGs when response_format=base64"},
                         413: {"description": "upload too large (bytes or pixels)"},
                         415: {"description": "not a supported image type"},
                         503: {"description": "queue full or timed out; see Retry-After"}})
    async def edit(request: Request,
                   image: UploadFile = File(description="PNG, JPEG, WebP, GIF, BMP or TIFF"),
                   # Optional here only because a form turns "" into "not sent": run_edit refuses it by name.
                   instruction: str | None = Form(None, max_length=MAX_INSTRUCTION_CHARS,
                                                  description="the edit to make; required, not blank"),
                   text_guidance: float = Form(d.text_guidance, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False),
                   image_guidance: float = Form(d.image_guidance, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False),
                   steps: int = Form(d.steps, ge=1, le=config.max_steps),
                   seed: int | None = Form(None, ge=0, lt=2**63),
                   variations: int = Form(1, ge=1, le=config.max_variations),
                   response_format: Literal["png", "base64"] = Form("png")):
        if instruction is None and "instruction" not in await request.form():  # the form is parsed once, cached
            raise HTTPException(422, [{"loc": ["body", "instruction"], "type": "missing",
                                       "msg": "instruction: missing; send the edit to make, e.g. 'make it snowy'"}])
        data = await image.read(config.limits.max_bytes + 1)
        results, seeds = await run_edit(data, instruction or "", text_guidance, image_guidance, steps, seed, variations)
        if response_format == "png" and len(results) == 1:
            return Response(png_bytes(results[0]), media_type="image/png", headers={"X-Seed": str(seeds[0])})
        return EditJSONResponse(images_base64=[base64.b64encode(png_bytes(r)).decode() for r in results],
                                seeds=seeds, width=results[0].width, height=results[0].height)

    @app.post("/api/edit/json", response_model=EditJSONResponse, summary="Edit one image (JSON, base64)",
              max_body_size=body_limit)
    async def edit_json(body: EditJSONRequest):
        if len(body.image_base64) > config.limits.max_bytes * 4 // 3 + 4:
            raise ImageRejected(f"the image is over the upload limit of {config.limits.max_bytes:,} bytes", 413)
        try:
            data = base64.b64decode(body.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, "image_base64 is not valid base64") from None
        results, seeds = await run_edit(data, body.instruction, body.text_guidance, body.image_guidance,
                                        body.steps, body.seed, body.variations)
        return EditJSONResponse(images_base64=[base64.b64encode(png_bytes(r)).decode() for r in results],
                                seeds=seeds, width=results[0].width, height=results[0].height)

    if with_ui:
        import gradio as gr

        from model.serving.webui import build_ui

        blocks = build_ui(worker, config, resolution)
        app = gr.mount_gradio_app(app, blocks, path="/ui", max_file_size=config.limits.max_bytes,
                                  footer_links=["api"], run_history=False)
    return app


def field_error(err: dict, allowed: dict[str, str]) -> dict:
    """One validation error as a 422 detail item: the field, what it takes; the input only when short."""
    loc = [str(part) for part in err.get("loc", ())]
    name = loc[-1] if loc else "request"
    msg = f"{name}: {err.get('msg', 'invalid')}"
    if name in allowed:
        msg += f" (allowed: {allowed[name]})"
    item = {"loc": loc, "msg": msg, "type": err.get("type", "")}
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and len(str(value)) <= ECHO_LIMIT:
        item["input"] = value if not isinstance(value, float) or math.isfinite(value) else str(value)  # JSON has no NaN
    return item


def serve(model: str, config: ServeConfig, device: str = "auto", dtype: str = "auto", compile_mode: str = "") -> None:
    """Load the editor and run the server until interrupted."""
    import uvicorn

    from model.editor.loading import load_editor

    editor = load_editor(model, device=device, dtype=dtype, compile_mode=compile_mode)
    app = create_app(editor, config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                           timeout_graceful_shutdown=5))
    if config.share:
        threading.Thread(target=_open_share_link, args=(server, config), daemon=True).start()
    log.info("serving %s on http://%s:%d (UI /ui, API docs /docs)", model, config.host, config.port)
    server.run()


def _open_share_link(server, config: ServeConfig) -> None:
    """A public Gradio share link to the whole server (UI and API): only with --share."""
    import secrets
    import time

    from gradio import networking

    while not server.started:
        time.sleep(0.2)
    try:
        url = networking.setup_tunnel(config.host, config.port, secrets.token_urlsafe(32), None, None)
        log.warning("public share link (anyone with it can use this server): %s/ui/", url)
    except Exception as e:  # noqa: BLE001
        log.error("could not open a share link (needs internet access to gradio.live): %s", e)
