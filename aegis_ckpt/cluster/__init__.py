"""Beyond one machine: Slurm preemption notices and requeue (``slurm``), and runs whose nodes keep their
checkpoints on local disks (``nodes``). Both use the cluster's own tools: ``scontrol`` and the Slurm environment
variables, and ``torch.distributed`` for agreement between nodes."""
