"""The on-disk protocol of one output directory: hashing, fsync, the manifest written last, verification
(``commit``), checkpoint folders, staging, quarantine and retention (``store``), the audit log, plain-Trainer
checks and the direct writer for large files."""
