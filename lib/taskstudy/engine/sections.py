"""The profile's schema: one pydantic model per section of a params file (`common` and one per chapter).

A model's defaults are the study's defaults, written once: a profile (params/*.yaml) holds only what differs from
them, and the library reads a section's values through its model (attribute typos fail). A chapter a user adds
needs no model here (`params.notebook_section_model` builds one from its notebook's `parameters` cell).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cluster(Section):
    address: str | None = None  # an existing Dask scheduler ("tcp://host:8786"); None = local


class Common(Section):
    seed: int = 0  # every random draw of the study derives from this seed
    split_seed: int | None = None  # seed of the rendered scene splits; None = `seed` (set it to vary one alone)
    image_size: int = Field(32, ge=16, le=256)  # scene images are image_size x image_size pixels
    n_train: int = Field(2000, ge=1)  # scenes in the task-network (Step I) split
    n_transfer: int = Field(400, ge=1)  # scenes in the transfer (Step II readout) split, smaller as in the paper
    n_val: int = Field(500, ge=1)  # scenes in the val split: early stopping, beam search, AHP, BIP (selection)
    n_test: int = Field(500, ge=1)  # scenes in the test split: Gain, Quality, significance (evaluation only)
    val_stop_images: int | None = Field(256, ge=8)  # early stopping reads the first N val images; None = all
    tasks: list[str] | None = None  # dictionary tasks to study; None = every task of taskstudy.world.tasks
    workers: int = Field(0, ge=0)  # 0 = run units in-process; n > 0 = a Dask LocalCluster of n workers
    cluster: Cluster = Cluster()  # scale-out to an existing Dask scheduler
    device: str = "cpu"  # torch device for training ("cpu", "cuda", "auto")
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # training forward passes: fp32, or bfloat16 autocast;
    # ^ auto: bf16 where the CPU runs it natively (AVX512-BF16, AMX), fp32 elsewhere (train.resolve_kernels)
    channels_last: bool | Literal["auto"] = "auto"  # training batches in NHWC layout; auto: where it is faster
    results_dir: str = "results"  # the results store, relative to the study root; entries under <dir>/<profile>/
    dataset: Literal["scenes", "taskonomy"] = "scenes"  # Steps I-IV on rendered scenes, or on Taskonomy folders
    taskonomy_root: str | None = None  # with dataset taskonomy: the folder (absolute, or relative to the study root)

    @model_validator(mode="after")
    def _taskonomy_needs_root(self) -> Common:
        if self.dataset == "taskonomy" and not self.taskonomy_root:
            raise ValueError("common.dataset is 'taskonomy': set common.taskonomy_root to the Taskonomy folder")
        return self


class Overview(Section):
    packages: list[str] = ["torch", "torchvision", "numpy", "pandas", "papermill", "jupyter-book", "pulp", "dask"]
    # ^ packages whose installed versions the overview chapter lists


class Scenes(Section):
    n_show: int = Field(3, ge=1)  # scenes shown in each gallery of task labels
    learnability_sizes: list[int] = [1024, 2048]  # object-world training-set sizes of the learnability table


class TaskNetworks(Section):
    width: int = Field(16, ge=1)  # encoder width w: stages of w, 2w, 4w channels; representation (4w, H/4, W/4)
    depth: int = Field(1, ge=1)  # BasicBlocks per encoder stage
    decoder_width: int = Field(32, ge=1)  # channels of the task decoders
    epochs: int = Field(16, ge=1)  # at most this many passes over the train split (the cosine's length)
    patience: int = Field(3, ge=1)  # early stopping: epochs without a better val loss before training stops
    batch_size: int = Field(32, ge=1)  # images per step
    lr: float = Field(2e-3, gt=0)  # Adam learning rate
    n_show: int = Field(3, ge=1)  # test scenes whose predictions the chapter shows
    check_epochs: int = Field(32, ge=0)  # convergence check: check_tasks retrained this long (patience scaled); 0 = off
    check_tasks: list[str] = ["edge2d", "normals"]  # the networks the convergence check retrains


class Transfers(Section):
    readout_width: int = Field(16, ge=1)  # channels of each readout D_{s->t}
    epochs: int = Field(32, ge=1)  # at most this many passes over the transfer split per readout
    patience: int = Field(4, ge=1)  # early stopping of readouts and scratch networks on the val split
    batch_size: int = Field(64, ge=1)  # images per step
    lr: float = Field(1e-2, gt=0)  # Adam learning rate of the readouts
    max_order: int = Field(3, ge=1, le=4)  # highest transfer order k (sources per readout)
    beam: int = Field(3, ge=1)  # top-b first-order sources per target (by val score) whose k-combinations are tried
    scratch_epochs: int = Field(32, ge=1)  # at most this many epochs of the from-scratch network (Gain's reference)
    corrupted_view: Literal["plain", "corrupted"] | dict[Literal["inpainting", "denoising"],
                                                         Literal["plain", "corrupted"]] = "plain"
    # ^ what the encoders of inpainting and denoising read: the query as it is, or corrupted as in their training;
    #   one view for both, or one per encoder (an encoder left out reads the plain query). Chosen on val (chapter 03)
    readout: Literal["shuffle", "decoder"] = "shuffle"
    # ^ the readout: two convs + pixel shuffle, or the paper's two-conv neck + the task's full decoder (chapter 03)
    schedule: Literal["cosine", "plateau"] = "cosine"
    # ^ the readouts' rate: a cosine over `epochs`, or divided by 10 on val plateaus (annealed wherever it stops)
    strategy: Literal["full", "pruned", "halving", "pruned+halving"] = "full"
    # ^ which first-order readouts Step II trains (taskonomy.step2): every one (the paper), the estimator's top
    #   `keep` sources per target, successive halving over `rungs`, or halving among the estimator's top `keep`
    keep: int = Field(8, ge=1)  # pruned: sources per target kept by the estimator (at least `beam` are kept)
    estimator: Literal["RSA", "DDS", "LogME", "H-score", "linear probe"] = "LogME"  # pruned: what ranks sources
    rungs: list[int] = [2, 8]  # halving: the short budgets (epochs) before `epochs`, ascending
    eta: int = Field(3, ge=2)  # halving: each rung keeps the better 1/eta of a target's sources (at least `beam`)


class Performance(Section):
    quick: bool = False  # fewer sizes and repeats in the benchmark suite
    bench_scenes: int = Field(512, ge=1)  # scenes rendered per repeat to measure throughput (at 32 px)
    bench_sizes: list[int] = [32, 64, 128]  # image sizes whose throughput the renderer's benchmark reports
    bench_repeats: int = Field(2, ge=1)  # repeats of each throughput measurement (min/median/max)


class Affinity(Section):
    max_order: int = Field(3, ge=1, le=4)  # highest order of source sets in the affinity matrix (capped by transfers)
    example_targets: list[str] = ["normals", "segment_semantic"]  # targets whose win matrices are shown


class Taxonomy(Section):
    budgets: list[int] = [1, 2, 3, 4, 6, 8, 12, 16]  # supervision budgets (source tasks) of the tables and tests
    orders: list[int] = [1, 2, 3]  # max transfer orders compared (capped by transfers.max_order)
    graph_budgets: list[int] = [2, 6]  # budgets whose taxonomies are drawn as graphs
    graph_orders: list[int] = [1, 3]  # orders whose taxonomies are drawn as graphs
    n_random: int = Field(100, ge=1)  # random feasible policies per budget (significance, Fig. 11)
    seed_offset: int = 0  # added to common.seed for drawing the random policies
    significance_order: int = Field(1, ge=1, le=4)  # max order of the policies in the significance test


class NovelTasks(Section):
    imagenet_epochs: int = Field(15, ge=1)  # epochs (cosine schedule) of the ImageNet-like classifier, or fewer
    imagenet_patience: int = Field(3, ge=1)  # epochs without a better validation loss before it stops
    imagenet_n_images: int = Field(3200, ge=32)  # pretrain-world images it trains on (32 balanced classes)
    max_order: int = Field(3, ge=1, le=4)  # highest transfer order the novel taxonomy may use (capped by transfers)
    budget: int = Field(0, ge=0)  # dictionary tasks the novel taxonomy may supervise; 0 = all of them


class TaskTree(Section):
    method: str = "average"  # scipy linkage method
    metric: str = "correlation"  # scipy pdist metric between the tasks' affinity columns
    n_groups: int = Field(4, ge=2)  # groups the tree is cut into (the paper's four)


class LayerTransfer(Section):
    dataset: Literal["objects", "cifar100"] = "objects"  # the study's object world, or a real CIFAR-100 copy
    cifar_root: str | None = None  # folder holding cifar-100-python/ (relative to the study root); for cifar100
    n_images: int = Field(4096, ge=2)  # training images, both halves A and B together
    n_val: int = Field(1024, ge=2)  # validation images (early stopping), both halves together
    n_test: int = Field(2048, ge=2)  # test images, both halves together
    image_size: int = Field(32, ge=16, le=256)  # pixels per side (objects rendered at it; CIFAR resized if not 32)
    layers: int = Field(7, ge=4)  # L: L-3 conv blocks, 2 hidden fully connected layers, the classifier
    width: int = Field(8, ge=1)  # channels of the first conv block (then 2x, 4x)
    hidden: int = Field(64, ge=1)  # units of each hidden fully connected layer
    epochs: int = Field(12, ge=1)  # passes over the target half: the cosine schedule's length (or stopped early)
    patience: int = Field(3, ge=1)  # epochs without a better validation loss before a net stops
    batch_size: int = Field(64, ge=1)  # images per step
    lr: float = Field(5e-3, gt=0)  # Adam learning rate (cosine decay over `epochs`)
    fine_tuned_n: list[int] = [2, 4, 6]  # n of the fine-tuned treatments BnB+ and AnB+; [] = every n
    check_epochs: int = Field(24, ge=0)  # the first seed's bases retrained on a schedule this long (0 = no check)
    seeds: int = Field(3, ge=1)  # repeats of every (split, treatment, n): the seed band of every curve


class TaskGrouping(Section):
    tasks: list[str] = ["segment_semantic", "depth_zbuffer", "normals", "keypoints2d", "edge2d"]
    # ^ every non-empty subset gets a full-size multi-task network, every task a half-size one
    width: int = Field(8, ge=1)  # full-size encoder width w (stages w, 2w, 4w); 1 budget unit = its MACs per image
    depth: int = Field(1, ge=1)  # BasicBlocks per encoder stage
    decoder_width: int = Field(16, ge=1)  # channels of each task decoder (not counted in the budget)
    epochs: int = Field(16, ge=1)  # at most (the cosine's length); early stopping on val decides
    patience: int = Field(5, ge=1)  # epochs without a better val loss before a network stops
    early_epoch: int = Field(3, ge=1)  # epoch after which val losses are recorded (early-stopping approximation)
    batch_size: int = Field(64, ge=1)  # images per step
    lr: float = Field(1e-2, gt=0)  # Adam learning rate (the lookahead takes Adam's step too)
    train_images: int = Field(500, ge=0)  # first images of the train split used (0 = all of n_train)
    lookahead_every: int = Field(5, ge=0)  # training steps between lookahead measurements (all-tasks network)
    seeds: int = Field(3, ge=1)  # every network trained with this many seeds: the seed band of every comparison
    equal_budget: bool = True  # Table 1: single-task networks of 1/k size, k = 3..N, beside the k-task networks
    settings: dict[str, dict[str, float]] = {  # the paper's other settings: name -> overrides of the values above
        "smaller network": {"width": 4},
        "less data": {"train_images": 125, "epochs": 24, "patience": 6}}
    setting_networks: Literal["pairs", "all"] = "pairs"  # what the other settings train: the full-size single-task
    # and pair networks (their Tables 2-4), or every candidate
    check_epochs: int = Field(32, ge=0)  # the control's first-seed single and all-tasks networks retrained this long
    image_size: int | None = Field(16, ge=16, le=256)  # the chapter's scenes rendered at this size (None: common's)


class Task2Vec(Section):
    images_train: int = Field(1920, ge=96)  # object-world images the heads and experts train on
    images_test: int = Field(960, ge=96)  # object-world images the test errors are measured on
    pretrain_images: int = Field(3200, ge=32)  # pretrain-world images the probe trains on (ImageNet's role)
    pretrain_val: int = Field(640, ge=32)  # pretrain-world images its early stopping reads
    scene_tasks: list[str] = ["class_scene", "class_object"]  # scene classification tasks added to the family
    probe_width: int = Field(8, ge=1)  # probe and expert encoders: stages of w, 2w, 4w channels
    probe_depth: int = Field(1, ge=1)  # BasicBlocks per encoder stage (probe and experts)
    probe_epochs: int = Field(15, ge=1)  # epochs (cosine schedule) of the probe on the pretrain classes, or fewer
    probe_patience: int = Field(3, ge=1)  # epochs without a better validation loss before the probe stops
    batch_size: int = Field(64, ge=1)  # images per step (probe and experts)
    lr: float = Field(3e-3, gt=0)  # Adam learning rate (probe and experts)
    head_wd: float = Field(1e-3, ge=0)  # L2 weight of the retrained linear heads
    head_steps: int = Field(50, ge=1)  # L-BFGS iterations of a linear head
    mc_samples: int = Field(1, ge=1)  # labels drawn from p(y|x) per image for the Fisher
    fisher_samples: int = Field(480, ge=0)  # at most this many training images per task enter its Fisher (0 = all)
    expert_width: int = Field(8, ge=1)  # encoder width of the experts
    expert_steps: int = Field(100, ge=1)  # optimiser steps of each expert (same compute for every task)
    alpha: float = Field(0.15, ge=0)  # weight of the complexity term of the asymmetric distance
    expert_factor: float = Field(1.5, ge=1)  # a pick within this factor of the best expert's error counts as good


class Agreement(Section):
    fisher_images: int = Field(480, ge=8)  # transfer-split images entering each dense task's Task2Vec Fisher
    head_steps: int = Field(200, ge=1)  # full-batch Adam steps of each dense Task2Vec head
    n_perm: int = Field(2000, ge=10)  # permutations behind each rank-correlation p-value


class Robustness(Section):
    tasks: list[str] = ["autoencoding", "edge2d", "keypoints2d", "depth_zbuffer", "normals", "reshading",
                        "curvature", "segment_semantic", "class_object"]  # the base's dictionary (a subset, for time)
    n_train: int | None = Field(None, ge=1)  # a smaller Step I split for the base; None = the main study's
    epochs: int | None = Field(None, ge=1)  # fewer Step I epochs for the base; None = the main study's
    seeds: list[int] = [1, 2]  # extra training seeds (common.seed, splits pinned): their spread is the yardstick
    variations: dict[str, list[str]] = {  # name -> dotted overrides on top of the base
        "smaller dictionary": ["common.tasks=[autoencoding, edge2d, keypoints2d, depth_zbuffer, normals, reshading, "
                               "segment_semantic, class_object]"],
        "readouts annealed on plateaus": ["transfers.schedule=plateau"]}
    budgets: list[int] = [1, 2, 3, 4]  # supervision budgets whose chosen source sets are compared (Jaccard)
    outside_dataset: Literal["objects", "cifar100"] = "objects"  # Sec. 5.1's outside set: object world or CIFAR-100
    outside_label: Literal["shape", "class"] = "shape"  # object world: 8 shapes or its 48 classes
    cifar_root: str | None = None  # folder holding cifar-100-python/ (relative to the study root); for cifar100
    outside_train: int = Field(2000, ge=16)  # outside images the linear probes are fitted on
    outside_test: int = Field(1000, ge=16)  # outside images the probe accuracy is measured on
    probe_grid: int = Field(2, ge=1)  # frozen features average-pooled to grid x grid cells before the probe
    probe_wd: float = Field(1e-3, ge=0)  # L2 weight of the linear probe
    probe_steps: int = Field(100, ge=1)  # L-BFGS iterations of the linear probe
    outside_targets: list[str] = ["class_object", "class_scene"]  # taxonomy rows compared with the outside ranking
    n_perm: int = Field(2000, ge=10)  # permutations behind the rank-correlation p-value


class Estimators(Section):
    max_samples: int = Field(8000, ge=16)  # (cell, label) samples per pair for LogME, H-score and the linear probe
    budgets: list[int] = [1, 2, 4, 8]  # supervision budgets of the BIP solved on each estimator's scores
    n_boot: int = Field(1000, ge=10)  # bootstrap resamples of the targets behind each agreement band
    taxonomy_boot: int = Field(200, ge=10)  # bootstrap resamples of the test images behind each Gain/Quality band
    variations: bool = True  # also on chapter 12's runs (its seeds and variations): do the standings hold?


class Adaptive(Section):
    levels: dict[str, list[str]] = {  # name -> transfers overrides: each strategy at a few compute levels
        "pruned, top 4": ["transfers.strategy=pruned", "transfers.keep=4"],
        "pruned, top 8": ["transfers.strategy=pruned", "transfers.keep=8"],
        "halving 2-8 epochs, 1/3": ["transfers.strategy=halving", "transfers.rungs=[2, 8]", "transfers.eta=3"],
        "top 12, halving 2-8, 1/3": ["transfers.strategy=pruned+halving", "transfers.keep=12",
                                     "transfers.rungs=[2, 8]", "transfers.eta=3"]}
    budgets: list[int] = [1, 2, 4, 8]  # supervision budgets of the BIP compared with the full Step II's
    n_boot: int = Field(200, ge=10)  # bootstrap resamples of the test images behind each paired Quality change


# Section models of the study's own chapters; a user's new chapter needs none (see notebook_section_model).
SECTIONS: dict[str, type[Section]] = {
    "overview": Overview, "scenes": Scenes, "task_networks": TaskNetworks, "transfers": Transfers,
    "affinity": Affinity, "taxonomy": Taxonomy, "novel_tasks": NovelTasks, "task_tree": TaskTree,
    "layer_transfer": LayerTransfer, "task_grouping": TaskGrouping, "task2vec": Task2Vec,
    "agreement": Agreement, "performance": Performance, "robustness": Robustness, "estimators": Estimators,
    "adaptive": Adaptive,
}
