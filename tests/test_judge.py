"""The pairwise judge: both orders, order-dependent verdicts as ties, position bias, agreement with the checkers; the
local backend on the packaged model and the HTTP backend against an OpenAI-compatible server on 127.0.0.1."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import message_lines

from trl_sso.data import make_record
from trl_sso.principles import ALL_FEATURES
from trl_sso.signal.judge import EndpointJudge, LocalJudge, format_judge, judge_messages, judge_report


def _records():
    """Two records per feature kind: a verifiable one (Lowercase: y+ follows, y- does not) and a qualitative one."""
    return [
        make_record(
            "Name a colour.", "GOOD red.", "Bad Red.", "red", "p", "n", conversational=True, features=["Lowercase"]
        ),
        make_record(
            "Say hi.", "GOOD hello", "Bad Hello", "hi", "p", "n", conversational=True, features=["Helpfulness"]
        ),
    ]


class Scripted:
    """A judge whose verdict is a function of the question text."""

    name = "scripted"

    def __init__(self, rule):
        self.rule, self.asked = rule, []

    def verdicts(self, questions):
        self.asked += questions
        return [self.rule(q[0]["content"]) for q in questions]


def _answer_a(text):
    return text.split("[Answer A]\n")[1].split("\n[End of answer A]")[0]


def _prefers_good(text):
    return "A" if _answer_a(text).startswith("GOOD") else "B"


def test_both_orders_are_asked_and_consistent_verdicts_count():
    judge = Scripted(_prefers_good)
    report = judge_report(judge, _records(), ALL_FEATURES)
    assert len(judge.asked) == 4  # two pairs, each in both orders
    first, second = judge.asked[:2]
    assert _answer_a(first[0]["content"]) == "GOOD red." and _answer_a(second[0]["content"]) == "Bad Red."
    assert "Quality: Every letter of the response is lowercase." in first[0]["content"]
    assert report["overall"]["correct"] == 1.0 and report["qualitative"]["correct"] == 1.0
    assert report["position_bias"]["first_answer_chosen"] == 0.5
    # the checker decides the Lowercase pair (y+ lowercase... but "GOOD" is not): it says tie, so no agreement figure
    assert report["agreement_with_checkers"]["pairs"] == 0


def test_verdicts_that_follow_the_position_are_ties_and_bias_is_reported():
    report = judge_report(Scripted(lambda text: "A"), _records(), ALL_FEATURES)
    assert report["overall"]["tie"] == 1.0 and report["overall"]["correct"] == 0.0
    assert report["position_bias"]["first_answer_chosen"] == 1.0
    low, high = report["overall"]["tie_ci95"]
    assert 0.0 < low < 1.0 == high  # two pairs: a wide interval, drawn from the counts


def test_agreement_with_checkers_on_decided_pairs():
    records = [
        make_record("Q", "all lowercase", "Not Lowercase", "x", "p", "n", conversational=True, features=["Lowercase"]),
        make_record("Q", "also lower", "Capital Here", "x", "p", "n", conversational=True, features=["Lowercase"]),
    ]
    agreeing = judge_report(Scripted(lambda t: "A" if _answer_a(t).islower() else "B"), records, ALL_FEATURES)
    assert agreeing["agreement_with_checkers"] == {
        "pairs": 2,
        "agreement": 1.0,
        "agreement_ci95": pytest.approx([0.3424, 1.0], abs=1e-4),
    }
    contrary = judge_report(Scripted(lambda t: "B" if _answer_a(t).islower() else "A"), records, ALL_FEATURES)
    assert contrary["agreement_with_checkers"]["agreement"] == 0.0 and contrary["overall"]["wrong"] == 1.0


def test_local_judge_reads_the_letter_log_probabilities(packaged_model):
    import torch

    model, tokenizer = packaged_model
    judge = LocalJudge(model, tokenizer, batch_size=2)
    records = _records()
    report = judge_report(judge, records, ALL_FEATURES)
    assert report["overall"]["pairs"] == 2 and report["position_bias"]["unreadable_verdicts"] == 0
    # one verdict by hand: the logits of "A" and "B" after the rendered question
    question = judge_messages("Name a colour.", "Every letter is lowercase.", "red.", "Red.")
    ids = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        last = model(**ids).logits[0, -1]
    a, b = (tokenizer.encode(letter, add_special_tokens=False)[0] for letter in "AB")
    assert judge.verdicts([question]) == ["A" if last[a] >= last[b] else "B"]
    assert judge.verdicts([question, question]) == judge.verdicts([question]) * 2  # batched alike
    # a shorter question padded on the left gets the verdict it gets alone
    short = judge_messages("Hi?", "Polite.", "Hello.", "Go away.")
    assert judge.verdicts([question, short]) == judge.verdicts([question]) + judge.verdicts([short])
    inputs = tokenizer(
        [tokenizer.apply_chat_template(q, tokenize=False, add_generation_prompt=True) for q in (question, short)],
        return_tensors="pt",
        padding=True,
        padding_side="left",
        add_special_tokens=False,
    )
    assert inputs["attention_mask"][1, 0] == 0  # the batch really pads the short question


class _ChatServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible `/v1/chat/completions`: it answers with `reply(question)`, or garbage when told to."""

    reply = staticmethod(_prefers_good)  # a text, or a whole JSON payload (a dict) to send as it is
    delay = 0.0  # seconds to wait before answering
    requests: list = []

    def do_POST(self):  # noqa: N802 (the http.server name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        time.sleep(self.delay)
        content = self.reply(body["messages"][-1]["content"])
        payload = content if isinstance(content, dict) else {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model") or "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    server.handle_error = lambda request, address: None  # a client that timed out and left: no server traceback
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatServer.requests, _ChatServer.delay = [], 0.0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _ChatServer
    _ChatServer.delay = 0.0
    server.shutdown()


def test_endpoint_judge_over_http(chat_server):
    url, handler = chat_server
    handler.reply = staticmethod(lambda text: f"Answer {_prefers_good(text)}.")
    report = judge_report(EndpointJudge(url, model="tiny-judge"), _records(), ALL_FEATURES)
    assert report["overall"]["correct"] == 1.0 and report["judge"] == f"tiny-judge at {url}"
    assert len(handler.requests) == 4
    path, body = handler.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "tiny-judge" and body["temperature"] == 0.0
    # one unreadable verdict in four (the share allowed): a tie, counted, and shown in the printed figures
    handler.reply = staticmethod(lambda text: "C" if "GOOD red." in _answer_a(text) else _prefers_good(text))
    report = judge_report(EndpointJudge(url), _records(), ALL_FEATURES)
    assert report["unreadable_verdicts"] == 1 and report["verdicts"] == 4 and report["overall"]["tie"] == 0.5
    assert "unreadable verdicts (no 'A' or 'B' in the reply, counted as ties): 1 of 4" in format_judge(report)


@pytest.mark.parametrize(
    "reply,shown",
    [
        ({"choices": []}, "first such reply: ChatCompletionOutput(choices=[],"),  # no choice at all
        ({}, "first such reply: ChatCompletionOutput(choices=None,"),  # no field at all
        ("C", "first such reply: 'C'."),  # names another letter
        ("both", "first such reply: 'both'."),
    ],
    ids=["no-choices", "empty-object", "letter-C", "both"],
)
def test_a_judge_whose_replies_are_unreadable_fails_in_one_line(chat_server, tmp_path, capsys, reply, shown):
    from datasets import Dataset

    from trl_sso.cli.main import main

    url, handler = chat_server
    handler.reply = staticmethod(lambda text: reply)
    Dataset.from_list(_records()).to_json(tmp_path / "data.jsonl")
    capsys.readouterr()
    out = tmp_path / "out"
    argv = ["inspect", str(tmp_path / "data.jsonl"), "--skip_onpolicy", "--judge", url, "--output_dir", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert len(message_lines(error)) == 1 and "Traceback" not in error
    assert f"endpoint at {url} gave 4 unreadable verdicts of 4" in error and shown in error
    assert not (out / "signal.json").exists()


def test_a_judge_that_does_not_reply_times_out_and_fails_in_one_line(chat_server, tmp_path, capsys):
    from datasets import Dataset

    from trl_sso.cli.main import main

    url, handler = chat_server
    handler.delay = 3.0
    Dataset.from_list(_records()).to_json(tmp_path / "data.jsonl")
    argv = ["inspect", str(tmp_path / "data.jsonl"), "--skip_onpolicy", "--judge", url, "--judge_timeout", "0.2"]
    capsys.readouterr()
    start = time.monotonic()
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert time.monotonic() - start < 15  # three tries of 0.2 s and two pauses (1 s, 2 s), not the server's delay
    assert f"The judge endpoint {url} did not answer" in error and "3 tries of at most 0.2 s" in error
    assert len(message_lines(error)) == 1 and len(handler.requests) == 3


def test_an_endpoint_that_does_not_answer_is_one_line_naming_it(tmp_path, capsys):
    import socket

    from datasets import Dataset

    from trl_sso.cli.main import main

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    Dataset.from_list(_records()).to_json(tmp_path / "data.jsonl")
    argv = ["inspect", str(tmp_path / "data.jsonl"), "--skip_onpolicy", "--judge", url, "--output_dir", str(tmp_path)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"The judge endpoint {url} did not answer" in error and "Traceback" not in error


def test_inspect_with_an_endpoint_judge(chat_server, tmp_path):
    from datasets import Dataset

    from trl_sso.cli.main import main

    url, handler = chat_server
    handler.reply = staticmethod(_prefers_good)
    Dataset.from_list(_records()).to_json(tmp_path / "data.jsonl")
    code = main(
        [
            "inspect",
            str(tmp_path / "data.jsonl"),
            "--skip_onpolicy",
            "--judge",
            url,
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    saved = json.loads((tmp_path / "out" / "signal.json").read_text())
    assert (
        saved["judge"]["qualitative"]["correct"] == 1.0
        and saved["judge"]["position_bias"]["first_answer_chosen"] == 0.5
    )


def test_generation_summary_and_card_carry_the_judge_when_asked(chat_server, tmp_path, tokenizer):
    from conftest import make

    url, handler = chat_server
    handler.reply = staticmethod(lambda text: "A")  # always the first answer: every verdict flips with the order
    _, summary = make(tmp_path, tokenizer, num_prompts=3, judge=url).run()
    judged = summary["signal"]["judge"]
    pairs = sum(len(features) for features in summary_features(tmp_path))
    assert judged["overall"]["pairs"] == pairs and judged["overall"]["tie"] == 1.0
    assert judged["position_bias"]["first_answer_chosen"] == 1.0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**Pairwise judge**" in card and "picks\nanswer A in 100.0% [" in card
    # the judge reports on the data, it does not make them: the same batches are reused without it
    again, _ = make(tmp_path, tokenizer, num_prompts=3).run()
    assert len(handler.requests) == 2 * pairs and len(again) == 3


def summary_features(tmp_path):
    from trl_sso.data import load_sso_dataset

    return load_sso_dataset(str(tmp_path / "out"))["features"]
