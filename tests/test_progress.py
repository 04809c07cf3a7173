import io
import time

from tamer.progress import progress_bar


def test_off_a_terminal_progress_prints_whole_lines_and_rarely():
    log = io.StringIO()  # not a terminal
    for _ in progress_bar(range(20000), desc="work", file=log):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the start and the end, not a redraw per step
    assert lines[-1].startswith("work: 100%") and "20000/20000" in lines[-1]


def test_off_a_terminal_progress_prints_a_line_per_interval(monkeypatch):
    monkeypatch.setattr("tamer.progress.LOG_INTERVAL", 0.05)
    log = io.StringIO()
    bar = progress_bar(total=5, desc="slow", file=log, leave=False)
    for _ in range(5):
        time.sleep(0.06)
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert 4 <= len(lines) <= 7 and all(line.startswith("slow:") for line in lines), lines


def test_off_a_terminal_a_postfix_per_step_does_not_redraw_per_step():
    log = io.StringIO()  # the trainer sets the losses as a postfix after every step
    bar = progress_bar(total=2000, desc="train", file=log)
    for step in range(2000):
        bar.update(1)
        bar.set_postfix({"loss": f"{1 / (step + 1):.4g}"})
    bar.close()
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= 3, lines[:5]
    assert "loss=" in lines[-1]
