"""The Hugging Face ``Trainer`` integration: the callback (``callback``), the pure decision it takes at each step
end (``stepdecision``), committing and publishing the saves (``commits``), the run's record (``runrecord``), its
settings (``settings``), its emergency stop (``emergency``), the setups it refuses or warns about (``compat``),
and two-phase (asynchronous) saves in ``asyncsave/``."""
