"""RLDS / Open X-Embodiment datasets as an episode :class:`~vlaforge.data.convert.Source` (``vlaforge convert rlds``).

On-disk layout, as TensorFlow Datasets writes it (no TensorFlow is needed to read it)::

    <name>/<version>/dataset_info.json     name, fileFormat, splits[{name, shardLengths, filepathTemplate}]
    <name>/<version>/features.json         the FeatureConnector tree (FeaturesDict / Dataset / Tensor / Image / Text)
    <name>/<version>/<name>-<split>.tfrecord-00000-of-0000N

Every record is one episode: a ``tf.train.Example`` whose keys flatten the feature tree with ``/``. The per-step
features of the ``steps`` Dataset are stored concatenated over the T steps: ``steps/observation/state`` is a
float list of T * 7 values reshaped by the shape in ``features.json``, ``steps/is_first`` an int64 list of T,
``steps/observation/image_0`` T encoded JPEG/PNG images (decoded with PIL), ``steps/language_instruction`` T
strings; ``Tensor(encoding="bytes"|"zlib")`` features hold one raw (optionally zlib-compressed) buffer per step.
Episode-level features (``episode_metadata/...``) are not used.

Point the source at the version directory (``bridge_dataset/1.0.0``) or at its parent (the highest version is
used). Two ways to say which fields become the canonical ``observation.images.<camera>``, ``observation.state``
and ``action``:

* ``standardize="<name>"``: an OXE-style per-dataset transform from :data:`TRANSFORMS` (``bridge``,
  ``bridge_oxe``, ``fractal``) that fixes cameras, state, action, instruction, fps and robot type, so that
  datasets of one mixture share cameras and dims (see :data:`MIXTURES`).
* otherwise the options: ``cameras`` (RLDS observation image key -> camera name), ``state_keys`` (concatenated),
  ``action_key`` (one key, or several concatenated), ``instruction_key`` and ``fps`` (RLDS does not record it).
  Keys may be given relative to ``observation/`` (``"state"``) or in full (``"observation/state"``).

Reference behaviour: OpenVLA's ``prismatic/vla/datasets/rlds/oxe`` (``transforms.py``, ``configs.py``,
``mixtures.py``), itself derived from Octo's OXE code.

* ``bridge`` = ``bridge_orig_dataset_transform`` for the BridgeData V2 release (``bridge_dataset``): the first
  step (all-zero action) is dropped; the gripper command ``action[:, 6]`` is binarized (> 0.95 open = 1,
  < 0.05 closed = 0, in-between values take the next decided value, scanning back from the last raw value,
  exactly as ``binarize_gripper_actions``); xyz/rpy are relabeled from the reached state,
  ``state[t+1, :6] - state[t, :6]`` (``relabel_bridge_actions``), which drops the last step. The state is
  OpenVLA's 8-d POS_EULER encoding ``[state[:6], 0 (pad), state[6]]``; camera ``image_0`` -> ``primary``;
  instruction ``language_instruction``; 5 fps; robot ``widowx``.
* ``bridge_oxe`` = ``bridge_oxe_dataset_transform`` for the Open X-Embodiment copy of Bridge (dataset name
  ``bridge``; dict action): as ``bridge`` but the gripper is the boolean ``action/open_gripper`` (not
  binarized), the camera is ``image`` and the instruction ``observation/natural_language_instruction``. As in
  OpenVLA, the relabeled action ignores ``world_vector`` / ``rotation_delta``.
* ``fractal`` = ``rt1_dataset_transform`` for ``fractal20220817_data`` (RT-1): action = ``world_vector`` (3),
  ``rotation_delta`` (3) and ``rel2abs_gripper_actions(gripper_closedness_action)``: the relative command
  (+1 close, -1 open, |x| <= 0.1 no change) becomes an absolute 1 = open / 0 = closed, the state before the
  first command being the opposite of that command (open when there is none). State = OpenVLA's
  ``state_obs_keys`` ``base_pose_tool_reached`` (xyz + quaternion) + ``gripper_closed`` (8-d POS_QUAT);
  camera ``image`` -> ``primary``; instruction ``observation/natural_language_instruction``; 3 fps; robot
  ``google_robot``.

Where this differs from OpenVLA: transforms run in NumPy on one decoded episode (not ``tf.data`` graphs);
episodes a transform leaves empty (fewer than 3 Bridge steps) are skipped with a warning rather than failing the
conversion; fps is ours (OpenVLA records none; 5 Hz Bridge and 3 Hz RT-1 as the OXE dataset list gives); only
the primary camera is kept by default (pass ``cameras=`` for ``image_1`` ...); images are kept at their stored
size (resizing belongs to the policy's image processor); no action/state normalization, chunking or
``absolute_action_mask`` happens here (the LeRobot writer computes statistics and the training reader chunks);
the relabeled rpy deltas are not wrapped to [-pi, pi), as in OpenVLA.
"""

from vlaforge.data.rlds.mixtures import MIXTURES, mixture
from vlaforge.data.rlds.schema import Field, read_step_schema
from vlaforge.data.rlds.source import RLDSSource, find_dataset_dir
from vlaforge.data.rlds.steps import Steps
from vlaforge.data.rlds.transforms import (
    TRANSFORMS,
    Standardization,
    Standardized,
    binarize_gripper,
    get_transform,
    register_transform,
    rel2abs_gripper,
    transform_for_dataset,
)

__all__ = ["MIXTURES", "TRANSFORMS", "Field", "RLDSSource", "Standardization", "Standardized", "Steps",
           "binarize_gripper", "find_dataset_dir", "get_transform", "mixture", "read_step_schema",
           "register_transform", "rel2abs_gripper", "transform_for_dataset"]
