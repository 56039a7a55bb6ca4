"""Throughput benchmarks (``make bench``): what the study costs on this machine,
and which throughput levers pay here.

Measures, on synthetic 32 px batches at the profile's model width (override
with ``--width``), per architecture (default: the profile's architectures,
supervised regimes and proxies):

- training images/s per regime (one optimiser step per batch, augmentation
  and attack included, the forward pass and the attack under the precision's
  autocast, backward outside it, as :mod:`iri_alignment.training` runs it);
- inversion image-iterations/s (reg-free objective through
  :func:`iri_alignment.inversion.invert`, the profile's inversion batch);
- scoring pairs/s per proxy (fp32 only, see :func:`bench_scoring`);
- process start-up (``python -c "import iri_alignment.cli"``, ``iri --help``,
  and a process importing what a job imports: torch and the stage modules)
  and the number of jobs of the profile's DAG that each pay it.

Each stage is measured for the reference path, fp32 eager, and for one
variant per lever (``--precisions``, ``--levers``):

======================  ==================================================
``bf16``                bf16 autocast (a ``--precisions`` entry); the
                        optimised image, the step and the best-iterate
                        bookkeeping stay fp32 (``invert(precision=...)``)
``channels_last``       model and inputs in NHWC memory layout
``compile``             ``torch.compile`` (default inductor backend);
                        its compile seconds are reported apart from the
                        steady-state rate; training only with
                        ``--compile-training`` (minutes of compile on CPU)
``batch``               inversion: all targets in one ``invert`` call, and
                        the targets of ``replicates`` IRI sets stacked in
                        one batch through one model
``vmap``                inversion: the replicate models stacked with
                        ``torch.func.stack_module_state`` + ``vmap``, each
                        inverting its own targets, in one call
======================  ==================================================

Levers that beat the reference by at least :data:`GAIN` are then combined
into one more variant, and the fastest path, the *kept* one, is reported
next to fp32 eager. Every speed is also a ratio against fp32 eager timed in
the same round: variants run round-robin (one warm-up call each, then
``--repeats`` rounds in which each runs once; medians), so that the drift of
a busy machine hits all of them alike. FLOP utilisation: the FLOPs of one
item (``torch.utils.flop_counter.FlopCounterMode`` on the fp32 eager path)
times the rate, against the fp32 and bf16 matmul peaks measured at the start
of the same run.

The report names the machine (CPU, cores, torch threads, device, versions)
since the numbers mean nothing without it. Results go to stdout as markdown
and, with ``--out``, to a JSON file (docs/bench.md explains how to read it):
``variants`` holds every measured row; ``training`` and ``inversion`` hold,
per group, the kept path's rate under the keys :func:`paper_cost` reads
(``images_per_s``, ``image_iterations_per_s``) and fp32 eager's next to it
(``..._fp32``); ``paper_cost_hours`` is priced at the kept paths,
``paper_cost_hours_fp32`` at fp32 eager.

Modules: :mod:`~iri_alignment.bench.race` (timing candidates side by side, FLOPs,
matmul peaks, which path is kept), :mod:`~iri_alignment.bench.stages` (training,
inversion and scoring candidates), :mod:`~iri_alignment.bench.startup` (process
start-up), :mod:`~iri_alignment.bench.report` (kept rates, the paper study's cost,
the markdown) and :mod:`~iri_alignment.bench.cli` (the command).
"""

from iri_alignment.bench.cli import main, run
from iri_alignment.bench.race import GAIN, LEVERS, REFERENCE, Candidate, count_flops, matmul_peaks, race
from iri_alignment.bench.report import markdown, paper_cost, summary
from iri_alignment.bench.stages import StackedReplicates, bench_inversion, bench_scoring, bench_training
from iri_alignment.bench.startup import bench_startup, dag_jobs, job_startup

__all__ = ["GAIN", "LEVERS", "REFERENCE", "Candidate", "StackedReplicates", "bench_inversion", "bench_scoring",
           "bench_startup", "bench_training", "count_flops", "dag_jobs", "job_startup", "main", "markdown",
           "matmul_peaks", "paper_cost", "race", "run", "summary"]
