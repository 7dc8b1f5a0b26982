"""A stand-in vLLM server on 127.0.0.1 for the tests: it speaks the part of the protocol of `trl vllm-serve` /
`vllm serve` that TRL's `VLLMClient` uses for trl-sso (`/health`, `/v1/models`, `/v1/completions` for generation from
token ids and for prompt log-probabilities, `/reset_prefix_cache`), backed by a transformers model on the CPU.

The weights of a new policy travel over vLLM's NCCL weight transfer, which needs a GPU. The tests replace the
client's two NCCL calls (`init_communicator`, `update_named_params`) with `cpu_weight_transfer`, which posts the same
tensors to `/cpu_update_weights`: the server then holds the pushed policy, as a real one would.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeVLLMServer:
    def __init__(self, model_path: str):
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict, status: int = 200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/health":
                    return self._send({})
                if self.path == "/v1/models":
                    return self._send({"data": [{"id": fake.model_path}]})
                return self._send({"error": "not found"}, 404)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append((self.path, body))
                with fake.lock:
                    if self.path == "/v1/completions":
                        return self._send({"choices": fake.completions(body)})
                    if self.path == "/reset_prefix_cache":
                        return self._send({"success": True})
                    if self.path == "/cpu_update_weights":
                        fake.load(body["weights"])
                        return self._send({})
                return self._send({"error": "not found"}, 404)

        return Handler

    @torch.no_grad()
    def completions(self, body: dict) -> list[dict]:
        prompts = body["prompt"]
        if body.get("prompt_logprobs") is not None:
            return [self._prompt_logprobs(ids) for ids in prompts]
        torch.manual_seed(body.get("seed") or 0)
        choices = []
        for ids in prompts:
            output = self.model.generate(
                torch.tensor([ids]),
                do_sample=True,
                temperature=body["temperature"],
                top_p=body["top_p"],
                top_k=None,
                max_new_tokens=body["max_tokens"],
                pad_token_id=self.model.config.eos_token_id,
            )
            choices.append({"prompt_token_ids": ids, "token_ids": output[0, len(ids) :].tolist(), "logprobs": None})
        return choices

    def _prompt_logprobs(self, ids: list[int]) -> dict:
        logps = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
        positions = [None] + [
            {str(ids[t]): {"logprob": logps[t - 1, ids[t]].item(), "rank": 1}} for t in range(1, len(ids))
        ]
        return {"prompt_token_ids": ids, "token_ids": [0], "prompt_logprobs": positions, "logprobs": None}

    def load(self, weights: dict) -> None:
        state = {name: torch.tensor(value) for name, value in weights.items()}
        self.model.load_state_dict(state, strict=False)


def cpu_weight_transfer(monkeypatch):
    """Route `VLLMClient`'s weight pushes over HTTP (see the module docstring); returns the list of pushes made."""
    from trl.generation import vllm_client, vllm_generation

    pushes = []

    def init_communicator(self, device=0):
        self.communicator = "cpu"

    def update_named_params(self, metadata, named_params):
        weights = {name: tensor.detach().float().tolist() for name, tensor in named_params}
        pushes.append(sorted(weights))
        self._post(f"{self.base_url}/cpu_update_weights", json={"weights": weights})

    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(vllm_client.VLLMClient, "init_communicator", init_communicator)
    monkeypatch.setattr(vllm_client.VLLMClient, "update_named_params", update_named_params)
    return pushes
