"""Malformed specs, data and arguments: exit 2, one line naming the key or file, no traceback, nothing written."""

import subprocess
import sys

import numpy as np
import pytest

from benchmarks.cli import main

SEQ = "[data]\nname = 'sequences'\n[model]\nkind = 'seq_pool'\n"
IMG = "[data]\nname = 'digits'\nimages = true\n"


def _cnn(*tables: str, tail: str = "{kind = 'flatten'}, {kind = 'dense'}") -> str:
    return "[model]\nlayers = [" + ", ".join((*tables, tail)) + "]\n"


BAD_SPECS = {
    "unknown_top": ("nmae = 'x'\n", "nmae"),
    "unknown_nested": ("[optimizer]\nlearning_rate = 0.1\n", "optimizer.learning_rate"),
    "wrong_type": ("[batching]\nbatch_size = 'sixteen'\n", "batching.batch_size"),
    "float_for_int": ("[batching]\nbatch_size = 16.5\n", "batching.batch_size"),
    "zero_batch": ("[batching]\nbatch_size = 0\n", "batching.batch_size"),
    "bad_policy": ("[batching]\nlast_batch = 'wrap'\n", "batching.last_batch"),
    "dropout_one": ("[regularization]\ndropout = 1.0\n", "regularization.dropout"),
    "negative_l2": ("[regularization]\nl2 = -0.1\n", "regularization.l2"),
    "bad_dtype": ("dtype = 'float16'\n", "dtype"),
    "bad_mode": ("mode = 'fast'\n", "mode"),
    "bad_optimizer": ("[optimizer]\nname = 'rmsprop'\n", "optimizer.name"),
    "zero_lr": ("[optimizer]\nlr = 0.0\n", "optimizer.lr"),
    "bool_for_float": ("[optimizer]\nlr = true\n", "optimizer.lr"),
    "adamw_coupled": ("[optimizer]\nname = 'adamw'\n", "regularization.decay"),
    "nesterov_no_momentum": ("[optimizer]\nnesterov = true\n", "optimizer.nesterov"),
    "negative_clip": ("[optimizer]\nclip_norm = -1.0\n", "optimizer.clip_norm"),
    "clip_form_without_norm": ("[optimizer]\nclip = 'per_tensor'\n", "optimizer.clip"),
    "bad_clip_form": ("[optimizer]\nclip_norm = 1.0\nclip = 'per_layer'\n", "optimizer.clip"),
    "bad_schedule": ("[schedule]\nkind = 'linear'\n", "schedule.kind"),
    "cosine_without_length": ("[schedule]\nkind = 'cosine'\n", "schedule.decay_steps"),
    "warmup_without_warmup": ("[schedule]\nkind = 'warmup_cosine'\ndecay_steps = 10\n", "schedule.warmup_steps"),
    "key_of_another_kind": ("[schedule]\nkind = 'step'\nfinal_lr = 0.1\n", "schedule.final_lr"),
    "zero_gamma": ("[schedule]\nkind = 'step'\ngamma = 0.0\n", "schedule.gamma"),
    "unknown_idiom": ("[native]\nidioms = ['l2_as_writen']\n", "native.idioms"),
    "idioms_not_a_list": ("[native]\nidioms = 'some'\n", "native.idioms"),
    "partial_split_bundle": ("[distributed]\nreplicas = 2\n[native]\nidioms = ['order']\n", "native.idioms"),
    "idioms_beside_native": ("mode = 'native'\n[native]\nidioms = ['order']\n", "native.idioms"),
    "hidden_not_list": ("[model]\nhidden = 32\n", "model.hidden"),
    "hidden_negative": ("[model]\nhidden = [32, -1]\n", "model.hidden"),
    "bad_activation": ("[model]\nactivation = 'gelu'\n", "model.activation"),
    "section_not_table": ("model = 3\n", "model"),
    "test_fraction_one": ("[data]\ntest_fraction = 1.0\n", "data.test_fraction"),
    "csv_without_path": ("[data]\nname = 'csv'\n", "data.path"),
    "doughnut_param": ("[data]\nname = 'doughnuts'\n[data.params]\nn = 'many'\n", "data.params.n"),
    "iris_param": ("[data]\nname = 'iris'\n[data.params]\nn = 10\n", "data.params.n"),
    "drop_too_big": ("[batching]\nbatch_size = 500\nlast_batch = 'drop'\n", "batching.batch_size"),
    "invalid_toml": ("name = \n", "spec file"),
    "zero_epochs": ("[train]\nepochs = 0\n", "train.epochs"),
    "bad_aggregation": ("[metrics]\naggregation = 'mean'\n", "metrics.aggregation"),
    # sequences
    "seq_model_on_features": ("[model]\nkind = 'rnn'\n", "model.kind"),
    "mlp_on_sequences": ("[data]\nname = 'sequences'\n", "model.kind"),
    "rnn_two_widths": ("[data]\nname = 'sequences'\n[model]\nkind = 'rnn'\nhidden = [4, 4]\n", "model.hidden"),
    "bad_pad_side": (SEQ + "[sequence]\npad = 'left'\n", "sequence.pad"),
    "bad_truncate_side": (SEQ + "[sequence]\ntruncate = 'middle'\n", "sequence.truncate"),
    "negative_max_len": (SEQ + "[sequence]\nmax_len = -1\n", "sequence.max_len"),
    "unsorted_buckets": (SEQ + "[sequence]\nbuckets = [8, 4]\n", "sequence.buckets"),
    "buckets_and_max_len": (SEQ + "[sequence]\nbuckets = [4, 8]\nmax_len = 6\n", "sequence.max_len"),
    "bad_loss_norm": (SEQ + "[sequence]\nloss_norm = 'per_batch'\n", "sequence.loss_norm"),
    "seq_fused": ("execution = 'fused'\n" + SEQ, "execution"),
    "seq_param_unknown": (SEQ + "[data.params]\nlength = 4\n", "data.params.length"),
    "seq_lengths_inverted": (SEQ + "[data.params]\nmin_len = 9\nmax_len = 3\n", "data.params.min_len"),
    "seq_vocab_one": (SEQ + "[data.params]\nvocab = 1\n", "data.params.vocab"),
    "jsonl_without_path": ("[data]\nname = 'jsonl'\n[model]\nkind = 'seq_pool'\n", "data.path"),
    # layer stacks
    "layer_unknown_kind": ("[model]\nlayers = [{kind = 'conv'}, {kind = 'dense'}]\n", "model.layers[0].kind"),
    "layer_unknown_key": ("[model]\nlayers = [{kind = 'dense', width = 3}]\n", "model.layers[0].width"),
    "layer_bad_activation": (
        "[model]\nlayers = [{kind = 'dense', units = 4, activation = 'gelu'}, {kind = 'dense'}]\n",
        "model.layers[0].activation",
    ),
    "layer_not_table": ("[model]\nlayers = ['dense']\n", "model.layers[0]"),
    "layer_last_not_dense": (
        "[model]\nlayers = [{kind = 'dense', units = 4}, {kind = 'relu'}]\n",
        "model.layers[1].kind",
    ),
    "layer_rnn_on_features": ("[model]\nlayers = [{kind = 'rnn'}, {kind = 'dense'}]\n", "model.layers[0].kind"),
    "layer_norm_eps_zero": (
        "[model]\nlayers = [{kind = 'dense', units = 4}, {kind = 'layer_norm', eps = 0.0}, {kind = 'dense'}]\n",
        "model.layers[1].eps",
    ),
    "layer_dropout_rate_one": (
        "[model]\nlayers = [{kind = 'dropout', rate = 1.0}, {kind = 'dense'}]\n",
        "model.layers[0].rate",
    ),
    "layers_and_shorthand": ("[model]\nhidden = [8]\nlayers = [{kind = 'dense'}]\n", "model.hidden"),
    "layer_last_units_not_classes": ("[model]\nlayers = [{kind = 'dense', units = 5}]\n", "model.layers[0].units"),
    "two_embeddings": (
        "[data]\nname = 'sequences'\n[model]\nlayers = [{kind = 'embedding'}, {kind = 'embedding'}, "
        "{kind = 'masked_mean'}, {kind = 'dense'}]\n",
        "model.layers[1].kind",
    ),
    "embedding_on_features": (
        "[model]\nlayers = [{kind = 'embedding'}, {kind = 'masked_mean'}, {kind = 'dense'}]\n",
        "model.layers",
    ),
    # images (docs/design.md, "Images and BatchNorm")
    "conv_kernel_beyond_input": (IMG + _cnn("{kind = 'conv2d', filters = 2, kernel = 9}"), "model.layers[0].kernel"),
    "pool_to_zero_size": (
        IMG + _cnn("{kind = 'conv2d', filters = 2, kernel = 3}", "{kind = 'max_pool', size = 7}"),
        "model.layers[1].size",
    ),
    "batch_norm_eps_zero": (IMG + _cnn("{kind = 'batch_norm', eps = 0.0}"), "model.layers[0].eps"),
    "batch_norm_momentum_one": (IMG + _cnn("{kind = 'batch_norm', momentum = 1.0}"), "model.layers[0].momentum"),
    "batch_norm_momentum_negative": (
        IMG + _cnn("{kind = 'batch_norm', momentum = -0.1}"),
        "model.layers[0].momentum",
    ),
    "batch_norm_bad_estimator": (
        IMG + _cnn("{kind = 'batch_norm', running_var = 'sample'}"),
        "model.layers[0].running_var",
    ),
    "conv_on_flat_data": (
        "[data]\nname = 'digits'\n" + _cnn("{kind = 'conv2d', filters = 2, kernel = 3}"),
        "model.layers[0].kind",
    ),
    "images_on_flat_model": (IMG, "model.kind"),
    "images_into_dense": (
        IMG + _cnn("{kind = 'conv2d', filters = 2, kernel = 3}", tail="{kind = 'dense'}"),
        "model.layers[1].kind",
    ),
    "images_on_iris": ("[data]\nname = 'iris'\nimages = true\n", "data.images"),
    "conv_without_filters": (IMG + _cnn("{kind = 'conv2d', kernel = 3}"), "model.layers[0].filters"),
    "conv_bad_padding": (
        IMG + _cnn("{kind = 'conv2d', filters = 2, kernel = 3, padding = 'full'}"),
        "model.layers[0].padding",
    ),
    "batch_norm_batch_of_one": (
        IMG
        + "[batching]\nbatch_size = 479\n"
        + _cnn("{kind = 'flatten'}", "{kind = 'dense', units = 4}", "{kind = 'batch_norm'}", tail="{kind = 'dense'}"),
        "batching.batch_size",
    ),
    # split steps (common.distributed)
    "replicas_zero": ("[distributed]\nreplicas = 0\n", "distributed.replicas"),
    "accumulate_zero": ("[batching]\naccumulate = 0\n", "batching.accumulate"),
    "global_batch_uneven": ("[distributed]\nreplicas = 3\n", "batching.batch_size"),
    "bad_reduction": ("[batching]\nreduction = 'sum'\n", "batching.reduction"),
    "bad_batch_meaning": ("[distributed]\nbatch = 'local'\n", "distributed.batch"),
    "split_fused": ("execution = 'fused'\n[batching]\naccumulate = 2\n", "batching.accumulate"),
    "split_sequences": (SEQ + "[distributed]\nreplicas = 2\n", "distributed.replicas"),
    "split_batch_norm_ragged": (  # digits: 1437 training rows, S = 2·32 = 64 leaves a ragged last step
        IMG
        + "[batching]\naccumulate = 2\nlast_batch = 'keep'\n"
        + _cnn("{kind = 'flatten'}", "{kind = 'batch_norm'}", tail="{kind = 'dense'}"),
        "batching.last_batch",
    ),
    "batch_norm_sync_not_bool": (
        IMG + _cnn("{kind = 'batch_norm', sync = 'yes'}"),
        "model.layers[0].sync",
    ),
    "replicas_beyond_rows": (
        "[data]\nname = 'doughnuts'\n[data.params]\nn = 20\n[distributed]\nreplicas = 32\nbatch = 'per_replica'\n",
        "distributed.replicas",
    ),
    # keys that do not apply to feature data, sizes beyond the limits (common.spec.MAX_WIDTH)
    "sequence_loss_norm_on_features": ("[sequence]\nloss_norm = 'per_token'\n", "sequence.loss_norm"),
    "sequence_max_len_on_features": ("[data]\nname = 'doughnuts'\n[sequence]\nmax_len = 4\n", "sequence.max_len"),
    "embed_dim_on_features": ("[model]\nembed_dim = 4\n", "model.embed_dim"),
    "hidden_beyond_limit": ("[model]\nhidden = [32, 4194304]\n", "model.hidden"),
    "bucketed_drop_too_big": (
        SEQ + "[batching]\nbatch_size = 300\nlast_batch = 'drop'\n[sequence]\nbuckets = [4, 12]\n",
        "batching.batch_size",
    ),
}


def _write_data(tmp_path, kind):
    """Malformed data files; returns (spec text, expected fragment)."""
    if kind == "missing_csv":
        return f"[data]\nname = 'csv'\npath = '{tmp_path / 'nope.csv'}'\n", "nope.csv"
    if kind == "nan_csv":
        (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\nnan,1,1\n3,4,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "NaN"
    if kind == "label_range":
        np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1, 2, -1, 0, 1]))
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "labels"
    if kind == "mismatch":
        np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1, 0]))
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "6 feature rows but 3 labels"
    if kind == "empty_csv":
        (tmp_path / "d.csv").write_text("")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "empty"
    if kind == "unreadable_npz":
        (tmp_path / "d.npz").write_bytes(b"not a zip at all")
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "unreadable"
    if kind == "duplicate_label_column":
        (tmp_path / "d.csv").write_text("label,a,label\n0,1,0\n1,2,1\n0,3,0\n1,4,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "label column 'label' 2 times"
    if kind == "huge_label_csv":
        (tmp_path / "d.csv").write_text("a,label\n1,0\n2,1\n3,1e300\n4,0\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "line 4: label 1e300"
    if kind == "gap_labels_npz":
        np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([1, 2, 3, 1, 2, 3]))
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "label 0 never occurs"
    if kind == "no_label_column":
        (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "label"
    if kind == "non_numeric_csv":
        (tmp_path / "d.csv").write_text("a,label\n1,0\nx,1\n2,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "non-numeric"
    if kind in JSONL_ROWS:
        rows, fragment = JSONL_ROWS[kind]
        (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
        return (
            "[data]\nname = 'jsonl'\npath = 'd.jsonl'\n[data.params]\nvocab = 10\nclasses = 2\n[model]\nkind = 'rnn'\n",
            fragment,
        )
    if kind == "missing_jsonl":
        return "[data]\nname = 'jsonl'\npath = 'nope.jsonl'\n[model]\nkind = 'seq_pool'\n", "nope.jsonl"
    raise AssertionError(kind)


GOOD_ROW = '{"tokens": [1, 2, 3], "label": 1}'
JSONL_ROWS = {  # malformed sequence files: each error names the file and the line
    "jsonl_empty_sequence": ([GOOD_ROW, '{"tokens": [], "label": 0}'], "line 2: 'tokens' must be a non-empty list"),
    "jsonl_out_of_vocab": ([GOOD_ROW, '{"tokens": [1, 10], "label": 0}'], "line 2: tokens must be in 1..9"),
    "jsonl_pad_token": (['{"tokens": [0, 4], "label": 0}'], "line 1: tokens must be in 1..9 (0 is reserved"),
    "jsonl_float_token": ([GOOD_ROW, GOOD_ROW, '{"tokens": [1.5], "label": 0}'], "line 3: tokens must be integers"),
    "jsonl_label_range": ([GOOD_ROW, '{"tokens": [2], "label": 2}'], "line 2: label must be an integer in 0..1"),
    "jsonl_not_json": ([GOOD_ROW, "tokens: [1]"], "line 2: not valid JSON"),
    "jsonl_missing_label": (['{"tokens": [1]}'], "line 1: expected an object with 'tokens' and 'label'"),
}

BAD_DATA = [
    "missing_csv",
    "nan_csv",
    "label_range",
    "mismatch",
    "empty_csv",
    "unreadable_npz",
    "no_label_column",
    "non_numeric_csv",
    "missing_jsonl",
    "duplicate_label_column",
    "huge_label_csv",
    "gap_labels_npz",
    *JSONL_ROWS,
]


def _check(capsys, tmp_path, argv, fragment):
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("parity: error:") and "\n" not in err, err
    assert fragment in err, err
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec(case, tmp_path, capsys):
    text, fragment = BAD_SPECS[case]
    (tmp_path / "s.toml").write_text(text)
    _check(capsys, tmp_path, ["run", str(tmp_path / "s.toml")], fragment)


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data(case, tmp_path, capsys):
    text, fragment = _write_data(tmp_path, case)
    (tmp_path / "s.toml").write_text(text)
    _check(capsys, tmp_path, ["run", str(tmp_path / "s.toml")], fragment)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "missing.toml"], "missing.toml"),
        (["run", "--set", "optimizer.lr"], "optimizer.lr"),
        (["run", "--set", "optimizer.lrr=0.1"], "optimizer.lrr"),
        (["run", "--backends", "torch,mxnet"], "mxnet"),
        (["run", "--bogus"], "arguments"),
        (["run", "--against-single"], "--against-single"),
        (["run", "--against-single", "--set", "batching.accumulate=2", "--seeds", "2"], "--against-single"),
        (["fly"], "arguments"),
        (["explain", "--pair", "torch"], "--pair"),
        (["explain", "--pair", "torch,mxnet"], "--pair"),
        (["explain", "--seeds", "1"], "--seeds"),
        (["run", "--executor", "dask"], "--executor"),
        (["run", "--jobs", "0"], "--jobs"),
        (["run", "--address", "127.0.0.1:6379"], "--address"),
        (["run", "--gpus-per-task", "-1"], "--gpus-per-task"),
        (["sweep", "iris-l2", "--workers", "0"], "--workers"),
        (["explain", "--executor", "threads"], "--executor"),
        (["explain", "--set", "native.idioms=['x']"], "native.idioms"),
        (["bench", "--rounds", "1"], "--rounds"),
        (["bench", "--cap", "0"], "--cap"),
        (["bench", "--threads", "0"], "--threads"),
        (["bench", "spec.toml", "--workload", "seq"], "--workload"),
    ],
)
def test_bad_arguments(argv, fragment, tmp_path, capsys):
    _check(capsys, tmp_path, argv, fragment)


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "s.toml").write_text("[optimizer]\nlr = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "optimizer.lr" in proc.stderr and not (tmp_path / "out").exists()
