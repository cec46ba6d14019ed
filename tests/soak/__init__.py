"""Soak under faults: worker processes are SIGKILLed and restarted while a fault-injecting server
answers; every job must end delivered byte-exact (or cancelled / failed by design).

``tests/soak/test_soak.py`` is the short CI version; ``python -m tests.soak --minutes N --seed S``
runs rounds of it for as long as asked.
"""
