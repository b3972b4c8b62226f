"""Two-phase saves: the Trainer's state copied to CPU on the training thread (``snapshot``, into reused
``buffers``), then written in the Trainer's own layout (``hflayout``) and committed in the background (``saver``,
or the optional ``writerproc`` process)."""
