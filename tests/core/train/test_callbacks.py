"""core.train.callbacks.CallbackList: every callback hears every event, in order."""
from core.train.callbacks import Callback, CallbackList


class Counting(Callback):
    def __init__(self, answer: bool):
        self.answer, self.asked = answer, 0

    def stop_requested(self) -> bool:
        self.asked += 1
        return self.answer


def test_stop_requested_asks_every_callback_even_after_a_yes():
    # a callback that takes part in a collective on every call (launcher.signals.StopOnSignal)
    # must be asked whatever stands before it, or ranks with another list order would hang
    first, second = Counting(True), Counting(False)
    assert CallbackList([first, second]).stop_requested() is True
    assert (first.asked, second.asked) == (1, 1)
    assert CallbackList([Counting(False), Counting(False)]).stop_requested() is False
