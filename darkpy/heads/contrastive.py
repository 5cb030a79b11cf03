"""[contrastive] (src/softmax_layer.c): Darknet's contrastive loss on the embeddings of a [yolo] layer.

The layer reads the embedding map (B, n*E, H, W) that a [convolutional] layer gives the [yolo] layer named by
`yolo_layer` (that [yolo] layer's `embedding_layer`): E values per anchor and cell. In training,
forward_yolo_layer writes, for every truth, its track id and class id into the cell and anchor the truth is assigned
to (`track_labels` in heads/yolo.py); forward_contrastive_layer then pulls together the embeddings of cells with the
same track id (the same object in the two images of a contrastive pair) and pushes apart those of other objects of
the same class (a supervised-contrastive loss with cosine similarity), writing a delta that backward adds to the
embedding layer's delta.

Darknet's CPU and GPU builds share this arithmetic (forward_contrastive_layer_gpu runs the CPU function) except
one step: the probabilities P of the detector path come from P_constrastive_f_det_gpu, which the GPU build runs only
when there are more than two pairs; with two or fewer, P stays 0. darkpy follows the GPU build.

At inference forward_contrastive_layer returns at once, so the CPU build's output stays zero, as a [cost] layer's
does; darkpy keeps that output.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from darkpy.heads.base import LossError
from darkpy.heads.yolo import FLT_MAX
from darkpy.layers.base import BuildContext, Layer, register

F32 = np.float32


@register("contrastive")
class ContrastiveLayer(Layer):
    """The loss layer; `deltas` is Darknet's forward_contrastive_layer in training for the detector case."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        s.get_int("classes", 1000)  # only the classifier's contrastive loss (no yolo_layer) uses it
        self.temperature = s.get_float("temperature", 1.0)
        self.cls_normalizer = s.get_float("cls_normalizer", 1.0)
        self.max_delta = s.get_float("max_delta", FLT_MAX)
        self.neg_max = s.get_int("contrastive_neg_max", 3)
        self.time_steps = ctx.time_steps  # l.steps: pairs are made only inside one time step's images
        self.inputs = [ctx.index - 1]  # the embeddings: kept for the loss
        self.yolo_index: Optional[int] = None
        yolo_layer = s.get_int("yolo_layer", 0)
        if yolo_layer != 0:  # parse_contrastive: 0 is no [yolo] (a classifier's contrastive loss)
            self.yolo_index = ctx.resolve(s, "yolo_layer", yolo_layer)
            self._check_embeddings(ctx.layers[self.yolo_index])
            ctx.layers[self.yolo_index].embeddings_trained = True

    def _check_embeddings(self, yolo: Layer) -> None:
        """make_contrastive_layer's check: the input holds the [yolo] layer's embeddings, E per anchor."""
        s = self.section
        if yolo.type != "yolo":
            raise s.error(f"layer {self.yolo_index} is a [{yolo.type}]; it must be the [yolo] layer whose "
                          f"embeddings this loss trains (Darknet stops here too)", "yolo_layer")
        c, h, w = self.in_shape
        size = yolo.embedding_size()
        if size == 0 or c != size * len(yolo.mask):
            raise s.error(f"its input has {c} channels but the [yolo] layer {self.yolo_index} has "
                          f"{len(yolo.mask)} anchors x embedding_size={size} (its embedding_layer's filters / "
                          f"anchors); they must read the same [convolutional] layer (Darknet stops here too)",
                          "yolo_layer")
        if (h, w) != tuple(yolo.out_shape[-2:]):
            raise s.error(f"its input is {w}x{h} but the [yolo] layer {self.yolo_index} is "
                          f"{yolo.out_shape[-1]}x{yolo.out_shape[-2]}: the embeddings must have the [yolo] grid",
                          "yolo_layer")

    def forward(self, x, outputs):
        return torch.zeros_like(x)

    def deltas(self, embedding: np.ndarray, labels: np.ndarray, class_ids: np.ndarray) -> Tuple[np.ndarray, float]:
        """Darknet's delta (same shape as `embedding`, (B, n*E, H, W)) and cost, given the [yolo] layer's track
        ids and class ids per cell and anchor ((B, n, H, W), -1 where no truth was assigned)."""
        B, n = labels.shape[:2]
        E = embedding.shape[1] // n
        # z[index]: index = b*n*H*W + a*H*W + y*W + x, as get_embedding reads them
        z = np.ascontiguousarray(np.asarray(embedding, F32).reshape(B, n, E, -1).transpose(0, 1, 3, 2)).reshape(-1, E)
        labels, class_ids = labels.reshape(-1), class_ids.reshape(-1)
        mini_batch = B // self.time_steps
        time_step = np.arange(len(labels)) // (len(labels) // B) // mini_batch
        pairs = _pairs(z, labels, class_ids, time_step, self.temperature)
        delta = np.zeros_like(z)
        for i in np.nonzero(labels >= 0)[0]:
            delta[i] = self._cell_delta(int(i), z, labels, class_ids, pairs)
        delta *= F32(self.cls_normalizer)
        np.clip(delta, F32(-self.max_delta), F32(self.max_delta), out=delta)
        out = delta.reshape(B, n, -1, E).transpose(0, 1, 3, 2).reshape(embedding.shape)
        # mag_array: a float sum of squares, its double sqrt returned as float, then pow(.., 2) in double
        magnitude = F32(np.sqrt(_sum(np.square(out.ravel()))))
        return np.ascontiguousarray(out), float(F32(np.float64(magnitude) ** 2))

    def _cell_delta(self, i: int, z: np.ndarray, labels: np.ndarray, class_ids: np.ndarray,
                    pairs: Dict[Tuple[int, int], Tuple[F32, F32]]) -> np.ndarray:
        """grad_contrastive_loss_positive_f then grad_contrastive_loss_negative_f for cell i: every term is
        subtracted from the cell's delta (which starts at 0)."""
        same = np.nonzero(labels == labels[i])[0]
        vec_len = np.sqrt(_sum(np.square(z[i])))
        if self.temperature == 0 or vec_len == 0:
            raise LossError(f"{self.cfg_location()}: temperature={self.temperature} and the embedding of cell {i} has "
                            f"length {vec_len}: Darknet stops here (\"N == 0 || temperature == 0 || vec_len == 0\")")
        if len(same) < 2:
            return np.zeros_like(z[i])
        mult = F32(1) / (F32(len(same) - 1) * F32(self.temperature) * vec_len)
        terms = []
        for j in same[same != i]:  # positive: the same track id
            if (i, int(j)) in pairs:
                sim, p = pairs[(i, int(j))]
                terms.append(mult * (sim * z[i] - z[j]) * (F32(1) - p))
        terms += self._negative_terms(i, same, z, labels, class_ids, pairs, mult)
        return -_sum(np.stack(terms), axis=0) if terms else np.zeros_like(z[i])

    def _negative_terms(self, i: int, same: np.ndarray, z: np.ndarray, labels: np.ndarray, class_ids: np.ndarray,
                        pairs: Dict[Tuple[int, int], Tuple[F32, F32]], mult: F32) -> List[np.ndarray]:
        """Other track ids of the class of each positive j; Darknet counts a candidate before looking its pair up
        (another time step has none) and stops after the first found one once contrastive_neg_max are counted."""
        terms, counter = [], 0
        for j in same[same != i]:
            others = np.nonzero((labels != labels[i]) & (class_ids == class_ids[j]))[0]
            for k in others[(others != i) & (others != j)]:
                counter += 1
                if (i, int(k)) not in pairs:
                    continue
                sim, p = pairs[(i, int(k))]
                terms.append(mult * (z[k] - sim * z[i]) * p)
                if counter >= self.neg_max:
                    return terms
        return terms


def _sum(values: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """A float sum as Darknet's loops make it. Its build (-Ofast) lets the compiler reorder float sums, so no
    order is Darknet's own: darkpy sums in double and rounds once to float (within a few float ulps of C's)."""
    return np.sum(np.float64(values), axis=axis).astype(F32)


def _cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cosine_similarity of a (E,) with each row of b: sum(a·b) / (sqrtf(|a|²)·sqrtf(|b|²)), 0 if that is 0."""
    mul, d_a, d_b = _sum(a * b, axis=1), _sum(a * a), _sum(b * b, axis=1)
    divider = np.sqrt(d_a) * np.sqrt(d_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(divider > 0, mul / divider, F32(0)).astype(F32)


def _pairs(z: np.ndarray, labels: np.ndarray, class_ids: np.ndarray, time_step: np.ndarray,
           temperature: float) -> Dict[Tuple[int, int], Tuple[F32, F32]]:
    """contrast_p: every ordered pair (i, j) of labelled cells of the same class and time step, i != j, with its
    cosine similarity and P = exp(sim_ij / T) / Σ_{pairs (k, j), k != i} exp(sim_kj / T) (0.9999 if that sum is 0
    or P > 1). The GPU build computes P only when there are more than two pairs (else it stays 0)."""
    labelled = np.nonzero(labels >= 0)[0]
    firsts, seconds, sims = [], [], []
    for i in labelled:
        js = labelled[(labelled != i) & (class_ids[labelled] == class_ids[i]) & (time_step[labelled] == time_step[i])]
        firsts.append(np.full(len(js), i))
        seconds.append(js)
        sims.append(_cosine_similarity(z[i], z[js]))
    if not firsts:
        return {}
    first, second, sim = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(sims).astype(F32)
    with np.errstate(over="ignore"):  # expf, correctly rounded as glibc's: exp in double, rounded to float
        exp_sim = np.exp(np.float64(sim / F32(temperature))).astype(F32)
    p = np.zeros(len(sim), F32)
    if len(sim) > 2:
        for j in np.unique(second):
            at = np.nonzero(second == j)[0]  # the pairs (k, j); pair (i, j)'s sum leaves out only itself
            denominator = (np.sum(np.float64(exp_sim[at])) - np.float64(exp_sim[at])).astype(F32)
            with np.errstate(divide="ignore", invalid="ignore"):
                result = np.where(denominator != 0, exp_sim[at] / denominator, F32(0.9999))
            p[at] = np.where(result > 1, F32(0.9999), result)
    return {(int(a), int(b)): (s, q) for a, b, s, q in zip(first, second, sim, p)}
