import shutil
import tempfile
from pathlib import Path

from services.llm.activity import Activity, parse_activity

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 7.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 4.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 100.0
vllm:generation_tokens_total{engine="0",model_name="tiny"} 1e3
vllm:request_success_created{engine="0",model_name="tiny"} 1.7e9
"""


def test_parse_sums_label_sets_and_ignores_lookalikes():
    a = parse_activity(METRICS)
    assert a == Activity(busy=3.0, total=1107.0)


def test_used_since():
    idle = Activity(0, 10)
    assert not idle.used_since(None) and not idle.used_since(Activity(0, 10))
    assert idle.used_since(Activity(0, 9))  # a request started and finished between two polls
    assert Activity(1, 10).used_since(Activity(1, 10))  # still running
    assert parse_activity("") == Activity(0, 0)


def test_tmpdir_is_short_enough_for_vllm_sockets(tmp_path):
    from services.llm.process import MAX_TMPDIR_LEN, socket_safe_tmpdir

    deep = socket_safe_tmpdir(tmp_path / ("x" * 80) / "tmp-1")
    assert deep.is_dir() and len(str(deep)) <= MAX_TMPDIR_LEN
    assert len(str(deep)) + 1 + 36 <= 107  # TMPDIR/<uuid4> must fit a unix socket path
    deep.rmdir()
    short = Path(tempfile.mkdtemp(dir="/tmp")) / "t"
    assert socket_safe_tmpdir(short) == short and short.is_dir()
    shutil.rmtree(short.parent)
