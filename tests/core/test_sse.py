"""The SSE reader the CLI and the sandbox node client share."""

from argosy.core.sse import sse_events


def test_events_carry_the_last_event_name_and_decoded_data() -> None:
    lines = [
        ": keep-alive",
        'data: {"a": 1}',
        "event: stdout",
        'data: {"text": "hi"}',
        "",
        "event: result",
        "data: 2",
    ]
    assert list(sse_events(lines)) == [("message", {"a": 1}), ("stdout", {"text": "hi"}), ("result", 2)]
