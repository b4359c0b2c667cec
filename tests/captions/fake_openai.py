"""A scripted OpenAI-compatible server on 127.0.0.1 for the Stage 1 tests.

Speaks POST /v1/chat/completions, /v1/completions and /v1/moderations. Each caption can be
given a script: the action of its 1st, 2nd, ... request (then "ok"):
  ok         a good reply derived from the caption ("make it snowy" -> "<caption> in the snow")
  malformed  a reply that does not split into two parts
  same       an output caption equal to the input
  refuse     a chat refusal (the API's refusal field)
  sorry      a refusal in plain words, as the reply's text
  prose      the JSON after a sentence: "Sure! Here is the edit: {...}"
  fenced     the JSON in a ```json fence, with a closing remark
  synonyms   the JSON with the keys "instruction" and "output_caption"
  no_edit    an empty instruction
  slow       sleep ``slow_s`` (longer than the client timeout), then reply ok
  429 / 500 / 400 / 401   that HTTP status with an OpenAI-style error body
Every request is logged as (endpoint, caption, action). ``rendezvous=n`` holds the first n
generation requests until n of them are in flight at once: with one request in flight per
client, it proves that n clients (Ray actors on different nodes) are working together;
``rendezvous_skip`` requests pass first without waiting (Stage 1's probe, sent alone).
``refused_format`` (e.g. "json_schema") answers every chat request asking for that response
format with HTTP 400, as endpoints without structured output do.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_SEP = "\n##\n"


def good_reply(caption: str) -> tuple[str, str]:
    return "make it snowy", f"{caption} in the snow"


def caption_of_prompt(prompt: str) -> str:
    """The caption of a completion prompt: the text after the last few-shot example."""
    body = prompt[: -len(PROMPT_SEP)] if prompt.endswith(PROMPT_SEP) else prompt
    return body.split("\nEND\n\n")[-1]


class FakeOpenAI:
    def __init__(self, script: dict[str, list[str]] | None = None, delay_s: float = 0.0, slow_s: float = 2.0,
                 flag_word: str = "forbidden", rendezvous: int = 0, rendezvous_timeout_s: float = 60.0,
                 refused_format: str = "", rendezvous_skip: int = 0):
        self.rendezvous_skip = rendezvous_skip
        self.refused_format = refused_format
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.delay_s = delay_s      # every request waits this long (to keep a run busy)
        self.slow_s = slow_s
        self.flag_word = flag_word
        self.log: list[tuple[str, str, str]] = []
        self.auth_headers: set[str] = set()
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.rendezvous_met: bool | None = None
        self._rendezvous = threading.Barrier(rendezvous, timeout=rendezvous_timeout_s) if rendezvous else None
        self._arrivals = 0
        self.max_in_flight = 0      # the most generation requests served at once
        self._attempts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def action_for(self, caption: str) -> str:
        with self._lock:
            n = self._attempts[caption]
            self._attempts[caption] += 1
            steps = self.script.get(caption, [])
            return steps[n] if n < len(steps) else "ok"

    def requests_for(self, caption: str, endpoint: str | None = None) -> list[str]:
        return [a for e, c, a in self.log if c == caption and (endpoint is None or e == endpoint)]

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.auth_headers.add(self.headers.get("Authorization", ""))
                    fake.bodies.append(body)
                try:
                    if self.path.endswith("/moderations"):
                        return self._moderations(body)
                    if self.path.endswith("/chat/completions"):
                        caption = body["messages"][-1]["content"]
                        endpoint = "chat"
                    elif self.path.endswith("/completions"):
                        caption = caption_of_prompt(body["prompt"])
                        endpoint = "completions"
                    else:
                        return self._send(404, {"error": {"message": f"no route {self.path}"}})
                    action = fake.action_for(caption)
                    if fake.refused_format and (body.get("response_format") or {}).get("type") == fake.refused_format:
                        action = "unsupported_format"
                    with fake._lock:
                        fake.log.append((endpoint, caption, action))
                        fake.in_flight += 1
                        fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    try:
                        self._act(endpoint, body, caption, action)
                    finally:
                        with fake._lock:
                            fake.in_flight -= 1
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def _act(self, endpoint, body, caption, action):
                if fake._rendezvous is not None:
                    with fake._lock:
                        fake._arrivals += 1
                        waits = fake.rendezvous_skip < fake._arrivals <= fake.rendezvous_skip + fake._rendezvous.parties
                    if waits:
                        try:
                            fake._rendezvous.wait()
                            fake.rendezvous_met = True
                        except threading.BrokenBarrierError:
                            fake.rendezvous_met = False
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if action == "unsupported_format":
                    return self._send(400, {"error": {"message": f"response_format of type {fake.refused_format} is "
                                                                 "not supported", "type": "invalid_request_error"}})
                if action.isdigit():
                    headers = {"Retry-After": "0"} if action == "429" else {}
                    return self._send(int(action), {"error": {"message": f"scripted {action}", "type": "test"}},
                                      headers)
                if action == "slow":
                    time.sleep(fake.slow_s)
                self._reply(endpoint, body, caption, action)

            def _reply(self, endpoint, body, caption, action):
                edit, output = good_reply(caption)
                if action == "same":
                    output = caption + "."
                usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                if action == "no_edit":
                    edit = " "
                if endpoint == "chat":
                    content = {
                        "malformed": "this is not json",
                        "sorry": "I'm sorry, but I can't help with that.",
                        "prose": "Sure! Here is the edit: " + json.dumps({"edit": edit, "output": output}),
                        "fenced": "```json\n" + json.dumps({"edit": edit, "output": output}) + "\n```\nEnjoy!",
                        "synonyms": json.dumps({"instruction": edit, "output_caption": output}),
                    }.get(action, json.dumps({"edit": edit, "output": output}))
                    message = {"role": "assistant", "content": content}
                    if action == "refuse":
                        message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
                    self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                                     "model": body["model"], "usage": usage,
                                     "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
                else:
                    text = f"{edit} {output}" if action == "malformed" else f"{edit}\n%%\n{output}"
                    self._send(200, {"id": "cmpl-test", "object": "text_completion", "created": 0,
                                     "model": body["model"], "usage": usage,
                                     "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                                  "logprobs": None}]})

            def _moderations(self, body):
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                with fake._lock:
                    fake.log.extend(("moderations", t, "ok") for t in texts)
                results = [{"flagged": fake.flag_word in t, "categories": {}, "category_scores": {}} for t in texts]
                self._send(200, {"id": "modr-test", "model": body.get("model", ""), "results": results})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler
