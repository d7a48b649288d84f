"""Breaks the code on purpose, one mutation at a time, and checks that the tests meant to catch it fail.

    python bench/mutation_check.py                    # all mutations: killed or survived, then a summary
    python bench/mutation_check.py --list             # names, edits and tests; checks every snippet still matches
    python bench/mutation_check.py --only train_step_gradient_ascent,ten_crop_top_left_thrice
    python bench/mutation_check.py --no-baseline      # when the tests just passed: half the time

All 21 killed in 532 s (baseline 181 s) on 2 cores (AMD EPYC Zen 4, family 25 model 17) shared with other
work (load 7-9); 1068 s (baseline 512 s) at load 10-17.

Each mutation is exact source-text replacements (file, old snippet, new snippet). The tracked and untracked
(not ignored) files of the repository are copied into a temporary folder; there the unmutated tests are run once
(the baseline: every test must pass and none be skipped, else a failure would prove nothing), then, for each
mutation, its snippets are replaced, its tests run (`pytest -x -q NODE_IDS`, in the copy, so the copy's code is
imported) and the files restored. Exit status 0 only when every mutation was killed; a snippet that is not found
exactly once prints `stale` (the code moved on: update the snippet) and fails the run too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # per pytest run; a mutation that hangs its tests this long counts as killed (timed out)


@dataclasses.dataclass(frozen=True)
class Edit:
  file: str
  old: str
  new: str


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  what: str
  edits: tuple[Edit, ...]
  tests: tuple[str, ...]


def _m(name: str, what: str, file: str, old: str, new: str, *tests: str) -> Mutation:
  return Mutation(name, what, (Edit(file, old, new),), tests)


LEARNING = "tests/learning_test.py::test_a_short_run_lowers_the_loss_and_beats_chance_on_validation"
CONFUSION = "tests/evaluation_test.py::test_eval_step_confusion_rows_are_true_labels_and_columns_predictions"
VIEWS = "tests/evaluation_test.py::test_views"
FUSED_RELU = "tests/bf16_conv_test.py::test_fused_relu_equals_nn_relu_after_the_convolution"
HANDLER = ("tests/preemption_test.py::"
           "test_the_handler_is_installed_in_the_main_thread_only_and_the_previous_one_comes_back")
SECOND_SIGTERM = ("tests/preemption_test.py::"
                  "test_a_second_sigterm_during_the_save_kills_at_once_and_the_previous_checkpoint_stays")

MUTATIONS: tuple[Mutation, ...] = (
    _m("train_step_gradient_ascent", "train_step climbs the loss (negated gradients)",
       "fer_jax/train.py", "state.tx.update(grads,", "state.tx.update(jax.tree.map(jnp.negative, grads),",
       LEARNING),
    _m("eval_step_confusion_transposed", "eval_step's confusion matrix: rows predictions, columns labels",
       "fer_jax/evaluation.py", ".at[labels, predictions].add(mask)", ".at[predictions, labels].add(mask)",
       CONFUSION),
    _m("eval_step_mask_ignored", "eval_step counts padding examples",
       "fer_jax/evaluation.py", ".at[labels, predictions].add(mask)", ".at[labels, predictions].add(1.0)",
       CONFUSION),
    _m("eval_step_first_view_only", "eval_step scores the first TTA view alone",
       "fer_jax/evaluation.py", "jnp.mean(jax.lax.map(softmax, jnp.stack(inputs)), axis=0)", "softmax(inputs[0])",
       "tests/evaluation_test.py::test_eval_step_scores_the_mean_of_every_views_softmax"),
    _m("fer2013_public_and_private_swapped", "the CSV's PublicTest rows go to test and PrivateTest to validation "
       "(models selected on the held-out split)",
       "tfds_builders/fer2013/readers.py", '"PublicTest": "validation", "PrivateTest": "test"}',
       '"PublicTest": "test", "PrivateTest": "validation"}',
       "tests/fer2013_builder_test.py::test_csv_bad_rows_are_skipped_and_counted"),
    _m("fer2013_folder_prefixes_swapped", "image folders: PublicTest_ files go to test and PrivateTest_ to validation",
       "tfds_builders/fer2013/readers.py", '{"PublicTest_": "validation", "PrivateTest_": "test"}',
       '{"PublicTest_": "test", "PrivateTest_": "validation"}',
       "tests/fer2013_builder_test.py::test_image_folders_with_usage_prefixes"),
    _m("fer2013_pixels_wrap_around", "CSV pixels outside 0-255 are kept (wrapped into uint8) instead of skipped",
       "tfds_builders/fer2013/readers.py", "if pixels.min() < 0 or pixels.max() > 255:", "if False:",
       "tests/fer2013_builder_test.py::test_csv_bad_rows_are_skipped_and_counted"),
    _m("eval_step_averages_logits", "eval_step averages the views' logits, then takes one softmax",
       "fer_jax/evaluation.py", "jnp.mean(jax.lax.map(softmax, jnp.stack(inputs)), axis=0)",
       "jax.nn.softmax(jnp.mean(jax.lax.map(lambda x: apply_fn(variables, x, train=False), jnp.stack(inputs)), 0))",
       "tests/evaluation_test.py::test_eval_step_scores_the_mean_of_every_views_softmax"),
    _m("ten_crop_top_left_thrice", "ten_crop_view: the top-left crop instead of the top-right and bottom-left",
       "fer_jax/evaluation.py", "images[:, :s, w - s:], images[:, h - s:, :s],",
       "images[:, :s, :s], images[:, :s, :s],", VIEWS, "tests/predict_test.py::test_centre_crop_and_colour_models"),
    _m("multi_scale_one_scale", "multi_scale_view: the ten crops three times at the image's own size",
       "fer_jax/evaluation.py", "  for delta in (-d, 0, d):", "  for delta in (0, 0, 0):",
       "tests/evaluation_test.py::test_multi_scale_is_ten_crops_of_the_face_shrunk_as_is_and_enlarged"),
    _m("resize_not_antialiased", "evaluation.resize shrinks with the plain triangle kernel (no antialiasing)",
       "fer_jax/evaluation.py", "/ max(1.0 / scale, 1.0)", "/ 1.0",
       "tests/evaluation_test.py::test_resize_is_jax_image_resize"),
    _m("multi_scale_through_jax_image_resize", "multi_scale_view resizes with jax.image.resize (no symbolic batch)",
       "fer_jax/evaluation.py", "resize(images, h + delta, w + delta)",
       "jax.image.resize(images, (images.shape[0], h + delta, w + delta, images.shape[3]), 'bilinear')",
       "tests/export_test.py::test_multi_scale_exports_with_any_batch_size",
       "tests/onnx_test.py::test_multi_scale_converts_to_onnx"),
    _m("flip_view_not_mirrored", "flip_view returns the plain view twice",
       "fer_jax/evaluation.py", "  return [x, x[:, :, ::-1]]", "  return [x, x]", VIEWS),
    _m("yunet_smallest_first", "YuNet boxes sorted smallest first",
       "fer_jax/serving/face_detection.py",
       "        boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))\n"
       "    return sorted(boxes, key=lambda b: (-b[2] * b[3],",
       "        boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))\n"
       "    return sorted(boxes, key=lambda b: (b[2] * b[3],",
       "tests/face_detection_test.py::test_detectors_put_the_largest_face_first[yunet]",
       "tests/predict_test.py::test_predict_numbers_the_faces_of_a_frame_largest_first"),
    _m("haar_smallest_first", "Haar boxes sorted smallest first",
       "fer_jax/serving/face_detection.py",
       "    # Largest first, then top-left to bottom-right: a stable order for rows and tests.\n"
       "    return sorted(boxes, key=lambda b: (-b[2] * b[3],",
       "    # Largest first, then top-left to bottom-right: a stable order for rows and tests.\n"
       "    return sorted(boxes, key=lambda b: (b[2] * b[3],",
       "tests/face_detection_test.py::test_detectors_put_the_largest_face_first[haar]"),
    _m("nonfinite_skip_keeps_new_batch_stats", "nonfinite='skip' no longer restores batch-norm statistics",
       "fer_jax/train.py", "batch_stats=keep(new_state.batch_stats, state.batch_stats),",
       "batch_stats=new_state.batch_stats,",
       "tests/reliability_test.py::test_nonfinite_skip_keeps_the_batch_norm_statistics"),
    _m("sigterm_handler_in_any_thread", "the SIGTERM handler is installed outside the main thread too",
       "fer_jax/preemption.py",
       "if threading.current_thread() is not threading.main_thread() or multiprocessing.parent_process() is not None:",
       "if multiprocessing.parent_process() is not None:", HANDLER),
    _m("sigterm_previous_handler_not_restored", "the previous SIGTERM handler is not restored",
       "fer_jax/preemption.py", "    signal.signal(signal.SIGTERM, previous)", "    pass", HANDLER),
    _m("second_sigterm_not_fatal", "a second SIGTERM during the save no longer kills",
       "fer_jax/preemption.py", "      os.kill(os.getpid(), signum)", "      pass", SECOND_SIGTERM),
    _m("main_evaluates_after_preemption", "main.py runs the evaluation after a preemption in train_and_eval mode",
       "fer_jax/main.py", 'run the same command to resume.")\n      return\n', 'run the same command to resume.")\n',
       "tests/preemption_test.py::test_sigterm_in_train_and_eval_mode_saves_and_skips_the_evaluation"),
    _m("preemption_not_at_a_log_step", "multi-process runs act on a notice at any step",
       "fer_jax/train.py",
       "return itstime(step, self.config.log_every_steps, self.total_steps) and distributed.any_process(",
       "return distributed.any_process(",
       "tests/multiprocess_test.py::test_every_process_acts_on_process_0s_notice_at_the_next_log_step"),
    _m("any_process_is_process_0", "a SIGTERM counts only where it reached process 0",
       "fer_jax/distributed.py", "  return bool(np.any(multihost_utils.process_allgather(np.bool_(flag))))",
       "  return bool(from_process_0(bool(flag)))",
       "tests/multiprocess_test.py::test_two_processes_match_one_process_and_checkpoint_moves_topology"),
    _m("grain_workers_die_on_sigterm", "grain's workers keep SIGTERM's default action (they die with the job)",
       "fer_jax/data/pipeline.py", "  signal.signal(signal.SIGTERM, signal.SIG_IGN)\n", "",
       "tests/input_pipeline_test.py::test_workers_outlive_a_sigterm_to_the_whole_job"),
    _m("cnn_ignores_its_conv", "the CNN builds flax's nn.Conv whatever kernels it is given",
       "fer_jax/models.py", "      x = self.conv(features, (3, 3), padding=\"SAME\", dtype=self.dtype)(x)",
       "      x = nn.Conv(features, (3, 3), padding=\"SAME\", dtype=self.dtype)(x)",
       "tests/im2col_conv_test.py::test_fast_cnn_matches_plain_flax_cnn_in_outputs_and_gradients",
       "tests/onednn_conv_test.py::test_cnn_on_onednn_matches_cnn_on_lax"),
    _m("prediction_never_on_onednn", "classifier() keeps XLA's convolutions whatever inference_kernels chose",
       "fer_jax/serving/inference.py", "    if chosen is not model_kernels.DEFAULTS:", "    if False:",
       "tests/fast_inference_test.py::test_onednn_path_equals_the_xla_path_on_the_bundled_model"),
    _m("onednn_state_init_on_onednn", "oneDNN runs build their state on oneDNN's kernels (uncacheable)",
       "fer_jax/train.py", "      plain, cache_after = model_factory.training_setup(self.config, self.info), \"\"",
       "      plain, cache_after = setup, \"\"",
       "tests/xla_cache_test.py::test_onednn_runs_build_the_state_with_flax_kernels_bitwise_equal"),
    _m("augmentation_ignores_the_seed", "the augmentation's draws no longer depend on config.seed",
       "fer_jax/data/pipeline.py", "seed=_derive_seed(seed, 1, process_index))",
       "seed=_derive_seed(0, 1, process_index))",
       "tests/input_pipeline_test.py::test_augmentation_is_seeded"),
    _m("normalization_stats_never_read_back", "the statistics file is written but never read (recomputed)",
       "fer_jax/data/stats.py", '  entry = cached.get(f"{split}:{limit}")', "  entry = None",
       "tests/input_pipeline_test.py::test_standardize_uses_cached_train_stats"),
    _m("erasing_mean_pools_the_channels", "random erasing's mean fill averages over the channels too",
       "fer_jax/data/augment.py", "      patch[...] = images[i].mean(axis=(0, 1))",
       "      patch[...] = images[i].mean()",
       "tests/augment_test.py::test_erasing_areas_and_fills"),
    _m("adamw_is_sgd_with_l2", "optimizer=adamw falls through to SGD with L2 added to the gradient",
       "fer_jax/optimizers.py", '  if config.optimizer == "adamw":', "  if False:",
       "tests/optimizers_test.py::test_weight_decay_skips_biases_and_each_optimizer_applies_it_as_documented"),
    _m("checksum_comparison_disabled", "verify() no longer compares SHA-256 digests",
       "fer_jax/checkpoint_checksums.py", '    if _sha256(file) != expected["sha256"]:', "    if False:",
       "tests/checkpoint_integrity_test.py::test_predict_refuses_a_damaged_step_in_one_line[flip_two_bytes]"),
    _m("seal_before_save_removed", "the steps finalized since the last save are not sealed before the next",
       "fer_jax/checkpointing.py", "    checkpoint_checksums.seal_finalized(str(manager.directory))", "    pass",
       SECOND_SIGTERM),
    _m("seal_after_finalize_removed", "the trainer no longer seals a saved step once orbax renamed it",
       "fer_jax/train.py", "unsealed = checkpointing.seal_if_finalized(workdir, unsealed)", "unsealed = None",
       "tests/checkpoint_integrity_test.py::test_a_run_killed_between_saves_leaves_its_newest_step_sealed"),
    _m("seal_after_finalize_seals_every_step", "the trainer's thread seals every unsealed step, deleted ones too",
       "fer_jax/checkpointing.py",
       "  if not checkpoint_checksums.is_sealed(directory):\n    checkpoint_checksums.seal(directory)",
       "  checkpoint_checksums.seal_finalized(checkpoint_dir(workdir))",
       "tests/checkpoint_integrity_test.py::test_sealing_the_newest_step_leaves_a_step_being_deleted_alone"),
    _m("every_step_damaged_trains_afresh", "resume with every step damaged starts from scratch silently",
       "fer_jax/checkpointing.py", "  if problems:\n    raise DamagedCheckpointError(",
       "  if False:\n    raise DamagedCheckpointError(",
       "tests/checkpoint_integrity_test.py::test_resume_with_every_step_damaged_stops_with_one_line"),
    _m("setup_without_the_state_layout", "the recorded setup leaves out the state's layout (ema_decay, clipping, ...)",
       "fer_jax/workdir_guard.py", '    setup["state_layout"] = state_layout(abstract_state)', "    pass",
       "tests/workdir_guard_test.py::"
       "test_a_rerun_that_adds_a_moving_average_is_refused_and_its_checkpoints_are_kept"),
    _m("intact_step_that_does_not_fit_is_moved", "an intact step that does not restore is moved away as damaged",
       "fer_jax/checkpointing.py", "      if verified:\n", "      if False:\n",
       "tests/workdir_guard_test.py::"
       "test_an_intact_checkpoint_that_does_not_fit_the_state_is_not_called_damaged"),
    _m("resume_without_the_iterator", "resume restores the state but not the input iterator's position",
       "fer_jax/checkpointing.py", "state = restore(manager, step, abstract_state, data_iterator)",
       "state = restore(manager, step, abstract_state)",
       "tests/train_test.py::test_resume_continues_on_the_next_batch"),
    _m("inference_nan_check_removed", "inference.load accepts NaN or Inf parameters",
       "fer_jax/serving/inference.py", "  if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(variables)):",
       "  if False:", "tests/predict_errors_test.py::test_predict_refuses_a_checkpoint_with_nan_or_inf_parameters"),
    _m("predict_dtype_ignored", "--dtype no longer changes the compute dtype",
       "fer_jax/serving/inference.py", "    config.dtype = dtype", "    pass",
       "tests/predict_test.py::test_dtype_sets_the_compute_dtype"),
    _m("faceless_video_gives_no_row", "a video with no face in any frame gives no error row",
       "fer_jax/serving/predict.py", "    if not with_faces:", "    if False:",
       "tests/predict_errors_test.py::test_unreadable_inputs_and_faceless_videos_give_their_error_rows"),
    _m("steps_in_flight_unbounded", "the loop dispatches steps without waiting on step k-2 (slow SIGTERM exit)",
       "fer_jax/train.py", "MAX_STEPS_IN_FLIGHT = 2", "MAX_STEPS_IN_FLIGHT = 10**9",
       "tests/startup_test.py::test_sigterm_with_a_slow_step_and_rare_logs_exits_within_5_s"),
    _m("cut_validation_not_a_preemption", "a SIGTERM that cut a validation short does not save and stop",
       "fer_jax/train.py", "preempt = preempt or (validate and val is None)", "pass",
       "tests/validation_test.py::test_sigterm_during_validation_saves_that_step_unvalidated_and_returns"),
    _m("step_metrics_not_written", "orbax no longer writes step metrics, so a restart forgets the best step",
       "fer_jax/checkpointing.py", "preservation_policy=policy, best_fn=lambda m: m[VAL_ACCURACY],",
       "preservation_policy=policy,",
       "tests/checkpoint_retention_test.py::test_the_best_step_survives_a_restart"),
    _m("damaged_shard_traceback", "a damaged dataset shard raises the reader's own error (a traceback)",
       "fer_jax/data/shards.py", "      raise self._damaged(keys, e) from e", "      raise",
       "tests/command_line_errors_test.py::test_trainer_stops_on_a_damaged_shard_with_one_line_naming_it[0]"),
    _m("config_typo_traceback", "a misspelt --config field gives absl's traceback again",
       "fer_jax/main.py", "  app.run(main, flags_parser=flag_parsing.parse)", "  app.run(main)",
       "tests/command_line_errors_test.py::test_misspelt_config_field_is_one_error_line_with_the_suggestion"),
    _m("ema_decay_not_warmed_up", "the moving average skips its warm-up (decay fixed from step 0)",
       "fer_jax/model_factory.py", "return jnp.minimum(decay, (1.0 + step) / (10.0 + step))",
       "return jnp.minimum(decay, 1.0 + 0.0 * step)",
       "tests/ema_test.py::test_the_average_moves_by_the_warmed_up_decay_each_step"),
    _m("ema_not_kept_on_skipped_step", "a skipped non-finite step still moves the moving average",
       "fer_jax/train.py", "ema_params=keep(new_state.ema_params, state.ema_params))",
       "ema_params=new_state.ema_params)",
       "tests/ema_test.py::test_a_skipped_nonfinite_step_leaves_the_average_alone"),
    _m("inference_ignores_ema", "predict, export and bundling load the raw parameters of a run with an average",
       "fer_jax/serving/inference.py", '"ema_params" if k == "params" and stored.get("ema_params") else k',
       "k", "tests/ema_test.py::test_a_run_with_ema_is_validated_evaluated_and_served_by_the_average"),
    _m("validation_scores_raw_parameters", "validation scores the raw parameters although the run keeps an average",
       "fer_jax/model_factory.py", "params = state.params if raw or not state.ema_params else state.ema_params",
       "params = state.params",
       "tests/ema_test.py::test_a_run_with_ema_is_validated_evaluated_and_served_by_the_average"),
    _m("validation_ignores_its_view", "validation scores the plain view whatever config.validation_view says",
       "fer_jax/validation.py", "eval_ds, view=self.view, stop=stop)", "eval_ds, stop=stop)",
       "tests/validation_test.py::test_validation_scores_the_configured_view"),
    _m("raw_validation_always_runs", "validation scores the raw parameters too although validate_raw_parameters is off",
       "fer_jax/train.py", "not state.ema_params or not self.config.validate_raw_parameters:",
       "not state.ema_params:",
       "tests/validation_test.py::test_validation_scores_the_raw_parameters_only_when_asked"),
    _m("ceil_pool_ignored", "VGG's ceil_pool drops an odd map's last row and column anyway",
       "fer_jax/models.py", "self.pool(pad_to_even(x) if self.ceil_pool else x)", "self.pool(x)",
       "tests/models_test.py::test_vgg_on_40x40_crops_flattens_a_2x2_map_or_with_ceil_pool_3x3"),
    _m("train_iter_never_closed", "the trainer leaves grain's workers to the interpreter's exit, where they race",
       "fer_jax/train.py", "train_iter.close()  # Its workers", "pass  # Its workers",
       "tests/command_line_errors_test.py::"
       "test_trainer_has_stopped_grains_workers_when_a_damaged_shard_error_leaves_it"),
    _m("mixup_partner_is_self", "mixup blends each face with itself (a no-op)",
       "fer_jax/losses.py", "(1.0 - lam) * images[::-1].astype", "(1.0 - lam) * images.astype",
       "tests/mixup_test.py::test_mixup_blends_each_face_with_its_mirror_in_the_batch_by_one_lam"),
    _m("mixup_targets_unblended", "mixup's loss keeps each face's own label as the whole target",
       "fer_jax/losses.py",
       "targets = mix.lam * targets + (1.0 - mix.lam) * jax.nn.one_hot(mix.partner_labels, num_classes)",
       "targets = targets",
       "tests/mixup_test.py::test_the_blended_loss_is_lam_times_one_labels_loss_plus_the_rest_times_the_partners"),
    _m("trainer_ignores_mixup_alpha", "the trainer's step never blends, whatever config.mixup_alpha says",
       "fer_jax/train.py", "mixup_alpha=config.mixup_alpha,", "mixup_alpha=0.0,",
       "tests/mixup_test.py::test_the_trainer_steps_with_the_configs_mixup"),
    _m("mixup_from_step_ignored", "mixup blends from the first step, whatever mixup_from_step says",
       "fer_jax/train.py", "on=state.step >= mixup_from_step)", "on=True)",
       "tests/mixup_test.py::test_before_mixup_from_step_a_step_is_exactly_the_step_without_mixup"),
    _m("trainer_ignores_mixup_from_epoch", "the trainer's step blends from the first step, whatever the config says",
       "fer_jax/train.py", "mixup_from_step=int(config.mixup_from_epoch * self.steps_per_epoch)", "mixup_from_step=0",
       "tests/mixup_test.py::test_the_trainer_steps_with_the_configs_mixup"),
    _m("mixup_stream_is_a_step", "mixup's draws start from step 1's dropout key",
       "fer_jax/train.py", "MIXUP_STREAM = 0x6D697875", "MIXUP_STREAM = 1",
       "tests/mixup_test.py::test_mixup_draws_come_from_no_step_dropout_key_of_a_long_run"),
    _m("late_ema_from_step_ignored", "the late decay of the moving average applies from the first step",
       "fer_jax/model_factory.py",
       "decay = jnp.where(step >= late_from_step, jnp.float32(late_decay), jnp.float32(decay))",
       "decay = jnp.float32(late_decay)",
       "tests/ema_test.py::test_a_late_decay_replaces_the_decay_from_its_step_on"),
    _m("trainer_ignores_late_ema", "the trainer's step keeps ema_decay throughout, whatever late_ema_decay says",
       "fer_jax/train.py", "late_ema=(config.late_ema_decay, int(config.late_ema_from_epoch * self.steps_per_epoch)),",
       "late_ema=(0.0, 0),", "tests/ema_test.py::test_the_trainer_averages_with_the_configs_late_decay"),
    _m("onednn_weights_unaligned", "oneDNN's weight buffers start where numpy's malloc puts them",
       "fer_jax/kernels/onednn_conv.py", "start = -raw.ctypes.data % _ALIGNMENT", "start = 0",
       "tests/onednn_conv_test.py::test_weight_buffers_start_on_a_cache_line"),
    _m("fused_relu_post_op_dropped", "the fused convolution returns conv + bias, the ReLU left out",
       "fer_jax/kernels/onednn_conv.py", "lib.relu_attribute() if relu else None", "None",
       FUSED_RELU),
    _m("fused_relu_gradient_unmasked", "the fused convolution's gradient ignores where the ReLU was 0",
       "fer_jax/kernels/onednn_conv.py", "dy = jnp.where(y > 0, dy, jnp.zeros((), dy.dtype))", "pass",
       FUSED_RELU),
    _m("vgg_ignores_conv_relu", "the VGG runs conv then nn.relu whatever kernel fuses the two",
       "fer_jax/models.py", "fused = self.conv_relu is not None and not self.batch_norm", "fused = False",
       "tests/bf16_conv_test.py::test_vgg_cpu_train_step_in_bfloat16_matches_float32"),
)


def check_snippets(mutation: Mutation, root: pathlib.Path) -> list[str]:
  """Problems with `mutation` in the tree at `root`: snippets not found exactly once, tests that do not exist."""
  problems = []
  for edit in mutation.edits:
    path = root / edit.file
    count = path.read_text().count(edit.old) if path.is_file() else 0
    if count != 1:
      problems.append(f"{edit.file}: old snippet found {count} times, not once: {edit.old!r}")
  for node in mutation.tests:
    file, _, name = node.partition("::")
    function = re.sub(r"\[.*\]$", "", name)
    path = root / file
    if not path.is_file() or not re.search(rf"^def {re.escape(function)}\(", path.read_text(), re.M):
      problems.append(f"test {node} does not exist")
  return problems


def copy_repo(target: pathlib.Path) -> None:
  """The tracked and untracked, not ignored, files of the working tree (uncommitted edits included)."""
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode().split("\0")
  for rel in filter(None, files):
    source = REPO / rel
    if source.is_file():
      (target / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target / rel)


def run_tests(root: pathlib.Path, tests: list[str], log: pathlib.Path) -> tuple[str, float]:
  """('passed' | 'failed' | 'skipped' | 'error: ...', seconds) of `pytest -x -q tests` in the copy."""
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(root))
  start = time.monotonic()
  try:
    out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rs", "-p", "no:cacheprovider", *tests],
                         cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    return f"timed out after {TIMEOUT_S} s", time.monotonic() - start
  seconds = time.monotonic() - start
  log.write_text(out.stdout + out.stderr)
  summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
  if out.returncode == 1:
    return "failed", seconds
  if out.returncode == 0:
    return ("skipped" if "skipped" in summary else "passed"), seconds
  return f"error: pytest exit status {out.returncode} ({summary}); see {log}", seconds


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--list", action="store_true", help="list the mutations and check their snippets; run nothing")
  p.add_argument("--only", help="comma-separated mutation names")
  p.add_argument("--keep", action="store_true", help="keep the temporary copy and the pytest logs")
  p.add_argument("--no-baseline", dest="baseline", action="store_false",
                 help="skip the unmutated run (half the time): only when those tests just passed on this tree")
  args = p.parse_args(argv)
  by_name = {m.name: m for m in MUTATIONS}
  chosen = list(MUTATIONS)
  if args.only:
    unknown = [n for n in args.only.split(",") if n not in by_name]
    if unknown:
      p.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [by_name[n] for n in args.only.split(",")]

  stale = {m.name: check_snippets(m, REPO) for m in chosen}
  if args.list:
    for m in chosen:
      print(f"{m.name}: {m.what} [{'stale' if stale[m.name] else 'ok'}]")
      for edit in m.edits:
        print(f"    {edit.file}: {edit.old!r} -> {edit.new!r}")
      for node in m.tests:
        print(f"    test {node}")
      for problem in stale[m.name]:
        print(f"    stale: {problem}")
    print(f"{len(chosen)} mutations, {sum(bool(v) for v in stale.values())} stale")
    return 1 if any(stale.values()) else 0

  start = time.monotonic()
  work = pathlib.Path(tempfile.mkdtemp(prefix="fer_jax_mutation_"))
  root, logs = work / "repo", work / "logs"
  logs.mkdir()
  results: dict[str, str] = {}
  try:
    copy_repo(root)
    runnable = [m for m in chosen if not stale[m.name]]
    for m in chosen:
      if stale[m.name]:
        results[m.name] = "stale"
        print(f"stale     {m.name}: " + "; ".join(stale[m.name]), flush=True)
    baseline_tests = list(dict.fromkeys(t for m in runnable for t in m.tests))
    if baseline_tests and args.baseline:
      outcome, seconds = run_tests(root, baseline_tests, logs / "baseline.log")
      print(f"baseline: {len(baseline_tests)} tests unmutated: {outcome} ({seconds:.0f} s)", flush=True)
      if outcome != "passed":
        print(f"error: the unmutated tests must all pass, none skipped, before a mutation can be judged; see "
              f"{logs / 'baseline.log'}" + ("" if args.keep else " (rerun with --keep to read it)"))
        return 2
    for m in runnable:
      originals = {e.file: (root / e.file).read_text() for e in m.edits}
      try:
        for e in m.edits:
          path = root / e.file
          path.write_text(path.read_text().replace(e.old, e.new, 1))
        outcome, seconds = run_tests(root, list(m.tests), logs / f"{m.name}.log")
      finally:
        for file, text in originals.items():
          (root / file).write_text(text)
      verdict = "killed" if outcome == "failed" or outcome.startswith("timed out") else "survived"
      if outcome.startswith("error") or outcome == "skipped":
        verdict = "error"
      results[m.name] = verdict
      print(f"{verdict:9} {m.name} ({seconds:.0f} s{'' if outcome in ('failed', 'passed') else ', ' + outcome})",
            flush=True)
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)
  counts = {v: sum(r == v for r in results.values()) for v in ("killed", "survived", "stale", "error")}
  print(f"{len(results)} mutations: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) +
        f" in {time.monotonic() - start:.0f} s")
  return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
