"""Stage 1 throughput: our async backend against the original generator's one-request-at-a-time loop.

Both talk to the same local OpenAI-compatible completions server (``LatencyServer`` below) that
answers every request after a fixed latency, standing in for a hosted model; both do the same work per
caption (the original fine-tuned completion format, parse, keep). The reference is the loop of
the original generate_txt_dataset script: a synchronous client, one completion per caption, in
order. Ours is a Stage 1 shard (``Worker.process_shard``): AsyncOpenAI with ``concurrency``
requests in flight, validation, parquet + stats written. Measured in one run, interleaved.

    python bench/captions.py --captions 64 --latency-ms 200 --concurrency 16

Last line: JSON with triples_per_s_ours, triples_per_s_reference, speedup (+ settings).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from datagen.captions import stage  # noqa: E402
from datagen.captions.prompts import completion_prompt  # noqa: E402
from datagen.captions.replies import read_reply  # noqa: E402
from datagen.config import load_config  # noqa: E402

KEY_ENV = "EDITSYNTH_BENCH_KEY"
PROMPT_SEP = "\n##\n"   # the fine-tuned format's prompt end (datagen/captions/prompts.py)


class LatencyServer:
    """POST /v1/completions on 127.0.0.1: after ``delay_s``, the completion ``make it snowy %% <caption>
    in the snow`` for the caption of the prompt, as a fine-tuned model would write it."""

    def __init__(self, delay_s: float):
        delay = delay_s

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                caption = body["prompt"].removesuffix(PROMPT_SEP).split("\nEND\n\n")[-1]
                time.sleep(delay)
                reply = json.dumps({"id": "cmpl", "object": "text_completion", "created": 0, "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                                 "text": f"make it snowy\n%%\n{caption} in the snow"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def reference_loop(base_url: str, captions: list[str]) -> int:
    """The original generator's shape: one synchronous request per caption, in order."""
    client = openai.OpenAI(api_key=os.environ[KEY_ENV], base_url=base_url, max_retries=0)
    kept = 0
    for caption in captions:
        resp = client.completions.create(model="ft-davinci", prompt=completion_prompt(caption, []),
                                         temperature=0.7, top_p=1.0, max_tokens=256, frequency_penalty=0.1,
                                         stop=["\nEND"])
        reading = read_reply(resp.choices[0].text)
        kept += not reading.rejection and bool(reading.edit and reading.output)
    client.close()
    return kept


def ours(base_url: str, caption_file: Path, n: int, concurrency: int) -> int:
    cfg = load_config("smoke", [
        "captions.backend=openai", "captions.source.kind=file", f"captions.source.path={caption_file}",
        "captions.source.limit=null", f"captions.num_triples={n}", f"captions.shard_size={n}",
        f"captions.openai.base_url={base_url}", f"captions.openai.api_key_env={KEY_ENV}",
        "captions.openai.api=completions", "captions.openai.few_shot=0", "captions.openai.model=ft-davinci",
        f"captions.openai.concurrency={concurrency}"])
    with tempfile.TemporaryDirectory() as out:
        return stage.Worker(cfg, out).process_shard(0).count_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="server time per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "bench-key")

    captions = [f"a photo of {i} red apples on a wooden table" for i in range(args.captions)]
    times = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory() as d, LatencyServer(args.latency_ms / 1000) as server:
        caption_file = Path(d) / "captions.txt"
        caption_file.write_text("\n".join(captions) + "\n")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            kept_ref = reference_loop(server.base_url, captions)
            times["reference"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            kept_ours = ours(server.base_url, caption_file, args.captions, args.concurrency)
            times["ours"].append(time.perf_counter() - t0)
    assert kept_ref == kept_ours == args.captions, (kept_ref, kept_ours)
    ref_rate = args.captions / min(times["reference"])
    our_rate = args.captions / min(times["ours"])
    print(f"reference (sequential loop): {ref_rate:8.2f} triples/s   best of {args.repeats}")
    print(f"ours (concurrency {args.concurrency:3d}):   {our_rate:8.2f} triples/s   best of {args.repeats}")
    print(f"at this latency, 450,000 triples take {450000 / ref_rate / 3600:.1f} h (reference) vs "
          f"{450000 / our_rate / 3600:.1f} h (ours) per worker")
    print(json.dumps({"triples_per_s_ours": round(our_rate, 2), "triples_per_s_reference": round(ref_rate, 2),
                      "speedup": round(our_rate / ref_rate, 2), "captions": args.captions,
                      "latency_ms": args.latency_ms, "concurrency": args.concurrency}))


if __name__ == "__main__":
    main()
