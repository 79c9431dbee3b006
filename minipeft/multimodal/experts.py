r"""Expert models: tools that look at the image and hand the language model *text*, not vectors.

LLaMA-Adapter V2 (Gao et al. 2023, arXiv:2304.15010, §4.4) adds a cheap trick at inference time. Besides the visual
prompt tokens it was trained with, the model can be given the output of **expert models**: a captioning system, an
OCR engine, an object detector. Their output is plain text, so it goes where text goes, into the prompt::

    The image shows a red circle.
    Question: what colour is the shape?

No weight of the language model changes, and the experts are trained (if at all) on their own; the language model
just reads their answer like any other words. The paper uses LLaMA-Adapter's own captioner and off-the-shelf
systems. This module builds two small experts for the book's easy-VQA shapes (one coloured circle, rectangle or
triangle on a light background, see :func:`minipeft.datasets.load_shapes`):

* :class:`PixelReader`, the "OCR-like" expert. OCR does not learn what a page means; it *reads* the marks on it. In
  the same way this reader measures the pixels with fixed rules: the background colour from the corners, the
  shape's pixels as those far from it, their mean colour named by the nearest entry of a palette, and the shape from
  how much of its bounding box it fills. The palette is its only fitted part (:meth:`PixelReader.calibrate`).
* :class:`ProbeCaptioner`, the "captioning" expert, made from the book's own frozen image encoder: one linear probe
  (logistic regression) per attribute on the encoder's pooled features, whose predictions fill a caption template.

:func:`with_context` is the single place where an expert's text is written into a prompt.
Chapter: Part III, "LLaMA-Adapter v1 and V2".
"""

from __future__ import annotations

import string

import torch
import torch.nn.functional as F


def with_context(prompt: str, context: str | None) -> str:
    """Put an expert's description in front of the prompt: ``"The image shows {context}.\\n{prompt}"``.

    ``context=None`` (no expert) returns the prompt unchanged, so a chapter can compare with and without the expert
    by changing one argument.

    Example::

        >>> with_context("Question: what shape is it?", "a red circle")
        'The image shows a red circle.\\nQuestion: what shape is it?'
    """
    if context is None:
        return prompt
    return f"The image shows {context}.\n{prompt}"


def _article(word: str) -> str:
    """``"a"`` or ``"an"`` by the first letter (good enough for colour names: "an orange", "a red")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------------------------
# The "OCR-like" expert: read the pixels.
# ---------------------------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor) -> torch.Tensor:
    """Return ``images`` as a float tensor after checking it is ``(N, 3, H, W)`` with room for 2x2 corners."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, 3, H, W) tensor of RGB values in [0, 1], got {got}; "
                         "add a batch dimension with images.unsqueeze(0) for a single image.")
    if images.shape[2] < 4 or images.shape[3] < 4:
        raise ValueError(f"images must be a (N, 3, H, W) tensor with H, W >= 4 (the background is read from 2x2 "
                         f"corner blocks), got {tuple(images.shape)}.")
    return images.float()


def _foreground(images: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split every image into background and shape.

    Returns ``(mask (N, H, W) bool, colour (N, 3), count (N,))``: which pixels belong to the shape, their mean RGB
    (zeros where there is no shape) and how many there are.
    """
    # The shape never reaches the corners, so the four 2x2 corner blocks (16 pixels) are background. Averaging all
    # four, not one, keeps a single odd corner pixel (noise, anti-aliasing) from shifting the estimate much.
    corners = torch.cat([images[:, :, :2, :2], images[:, :, :2, -2:], images[:, :, -2:, :2], images[:, :, -2:, -2:]],
                        dim=-1)  # (N, 3, 2, 8)
    background = corners.mean(dim=(2, 3))  # (N, 3)
    # Summing |difference| over the channels sees a change in any channel: a yellow shape on a light background
    # differs mainly in blue, a gray one a little in all three.
    distance = (images - background[:, :, None, None]).abs().sum(dim=1)  # (N, H, W)
    mask = distance > threshold
    count = mask.sum(dim=(1, 2))  # (N,)
    colour = (images * mask[:, None]).sum(dim=(2, 3)) / count.clamp(min=1)[:, None]  # (N, 3), 0 when empty
    return mask, colour, count


def _fill_fraction(mask: torch.Tensor) -> torch.Tensor:
    """Foreground pixels / area of their bounding box, per image ``(N,)``; 0 for an empty mask."""
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (N, H), (N, W): does the row / column hold a shape pixel?

    def extent(occupied: torch.Tensor) -> torch.Tensor:
        # argmax of a 0/1 row gives the first 1; on the flipped row it gives the distance of the last 1 from the end.
        length = occupied.shape[1]
        first = occupied.int().argmax(dim=1)
        last = length - 1 - occupied.flip(1).int().argmax(dim=1)
        return (last - first + 1).clamp(min=1)

    box = extent(rows) * extent(cols)  # (N,)
    return mask.sum(dim=(1, 2)) / box


class PixelReader:
    r"""Read the colour and the shape of the single shape in each image, with fixed rules (no learning but a palette).

    How an image is read (all images at once, no loop over pixels):

    1. **Background**: the mean colour of the four 2x2 corner blocks.
    2. **Shape pixels**: those whose colour differs from the background by more than ``threshold``, measured as
       :math:`\sum_c |x_c - b_c|` over the three channels.
    3. **Colour**: the mean RGB of the shape pixels, named by the nearest palette entry (Euclidean distance).
    4. **Shape**: from the *fill fraction* :math:`f = \text{shape pixels} / \text{area of their bounding box}`.
       A rectangle fills its box (:math:`f \approx 1`), a disc fills :math:`\pi r^2 / (2r)^2 = \pi/4 \approx 0.785`
       of it, a triangle with a side along the box fills half (:math:`f \approx 0.5`). Two cut points between those
       values, ``cuts = (0.64, 0.9)``, give triangle :math:`< 0.64 <` circle :math:`< 0.9 <` rectangle. Small shapes
       drift from the ideal values (a pixelated disc edge, a thin triangle's jagged sides), which is why the cuts sit
       roughly halfway between the ideal fractions rather than close to any of them.

    Args:
        palette: colour name → reference RGB in [0, 1]; build it from labelled images with :meth:`calibrate`.
        threshold: how far (summed over RGB) a pixel must be from the background to count as the shape.
        cuts: the two fill fractions that separate triangle | circle | rectangle.

    Example::

        >>> reader = PixelReader.calibrate(train.images, train.color, COLORS)
        >>> reader.describe(test.images[:2])
        ['a red circle', 'a teal triangle']
    """

    SHAPES = ("triangle", "circle", "rectangle")  # in the order of their fill fraction, low to high

    def __init__(self, palette: dict[str, tuple[float, float, float]], threshold: float = 0.15,
                 cuts: tuple[float, float] = (0.64, 0.9)):
        if not palette:
            raise ValueError("palette is empty; give at least one colour name → (r, g, b), or use "
                             "PixelReader.calibrate(images, colour_labels, colour_names).")
        for name, rgb in palette.items():
            if len(rgb) != 3:
                raise ValueError(f"palette colour {name!r} must be an (r, g, b) triple, got {rgb!r}.")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold!r}.")
        low, high = cuts
        if not 0 < low < high <= 1:
            raise ValueError(f"cuts must satisfy 0 < low < high <= 1 (triangle | circle | rectangle), got {cuts!r}.")
        self.palette = {name: tuple(float(v) for v in rgb) for name, rgb in palette.items()}
        self.threshold, self.cuts = float(threshold), (float(low), float(high))
        self._names = list(self.palette)
        self._centres = torch.tensor([self.palette[name] for name in self._names])  # (K, 3)

    @classmethod
    def calibrate(cls, images: torch.Tensor, colour_labels: torch.Tensor, colour_names: list[str],
                  **kw) -> PixelReader:
        """Build the palette from labelled images: each colour's entry is the mean shape colour of its images.

        Rendered colours are not the textbook RGB ("teal" is not exactly (0, 0.5, 0.5)), so measuring them on a few
        labelled images is the one thing this expert learns.

        Args:
            images: ``(N, 3, H, W)`` in [0, 1].
            colour_labels: ``(N,)`` index into ``colour_names`` for every image.
            colour_names: the name of each colour index; every one needs at least one (non-blank) image.
            **kw: ``threshold`` and ``cuts``, passed to the constructor (``threshold`` is also used here).
        """
        images = _check_images(images)
        colour_labels = torch.as_tensor(colour_labels).long().flatten()
        if colour_labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {colour_labels.shape[0]} colour labels.")
        if colour_labels.numel() and not (0 <= colour_labels.min() and colour_labels.max() < len(colour_names)):
            raise ValueError(f"colour labels must be indices into the {len(colour_names)} colour_names.")
        _, colour, count = _foreground(images, kw.get("threshold", 0.15))
        palette = {}
        for k, name in enumerate(colour_names):
            chosen = (colour_labels == k) & (count > 0)  # a blank image says nothing about any colour
            if not chosen.any():
                raise ValueError(f"cannot calibrate colour {name!r}: no image with a visible shape has that label; "
                                 "use more images or leave the colour out of colour_names.")
            palette[name] = tuple(colour[chosen].mean(dim=0).tolist())
        return cls(palette, **kw)

    def read(self, images: torch.Tensor) -> list[dict]:
        """One dict per image: ``{"colour": str | None, "shape": str | None, "fill": float}``.

        A blank image (no pixel far enough from the background) gives ``None`` for colour and shape and fill 0.
        """
        images = _check_images(images)
        mask, colour, count = _foreground(images, self.threshold)
        fill = _fill_fraction(mask)
        nearest = torch.cdist(colour, self._centres.to(colour)).argmin(dim=1)  # (N,) index into the palette
        # bucketize with right=True puts f == cut in the upper class: 0 → triangle, 1 → circle, 2 → rectangle
        shape = torch.bucketize(fill, torch.tensor(self.cuts, dtype=fill.dtype), right=True)
        readings = []
        for n in range(images.shape[0]):
            empty = count[n].item() == 0
            readings.append({
                "colour": None if empty else self._names[nearest[n].item()],
                "shape": None if empty else self.SHAPES[shape[n].item()],
                "fill": float(fill[n]),
            })
        return readings

    def describe(self, images: torch.Tensor) -> list[str]:
        """One short phrase per image, e.g. ``"a red circle"``, or ``"an empty image"`` when there is no shape."""
        phrases = []
        for reading in self.read(images):
            if reading["shape"] is None:
                phrases.append("an empty image")
            else:
                phrases.append(f"{_article(reading['colour'])} {reading['colour']} {reading['shape']}")
        return phrases

    def __repr__(self) -> str:
        return f"PixelReader(colours={self._names}, threshold={self.threshold}, cuts={self.cuts})"


# ---------------------------------------------------------------------------------------------------------------
# The "captioning" expert: linear probes on a frozen image encoder.
# ---------------------------------------------------------------------------------------------------------------


def _check_features(features: torch.Tensor) -> torch.Tensor:
    """Return ``features`` as a detached float ``(N, D)`` tensor, or explain what was expected."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be an (N, D) tensor of pooled encoder features, got {got}.")
    return features.detach().float()


class ProbeCaptioner:
    r"""Caption images from frozen encoder features with one linear probe per attribute.

    Each attribute (say ``"colour"`` and ``"shape"``) gets its own logistic regression
    :math:`p(y \mid x) = \mathrm{softmax}(W^\top \hat{x} + b)` on the standardised features
    :math:`\hat{x} = (x - \mu) / \sigma` (:math:`\mu, \sigma` from the training features). Standardising puts every
    feature on the same scale, so one learning rate suits them all. The weights start at zero (every class equally
    likely) and take ``steps`` full-batch Adam steps on the cross-entropy. With zero init and full batches nothing
    is random, so the fit is deterministic.

    The probes' predictions fill a caption template (:meth:`describe`): that text is the expert's output.

    Build it with :meth:`fit`.

    Example::

        >>> captioner = ProbeCaptioner.fit(features, {"colour": data.color, "shape": data.shape},
        ...                                {"colour": COLORS, "shape": SHAPES})
        >>> captioner.describe(test_features[:1])
        ['a red circle']
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weights: dict[str, torch.Tensor],
                 biases: dict[str, torch.Tensor], names: dict[str, list[str]]):
        self.mean, self.std = mean, std  # (D,), (D,)
        self.weights, self.biases = weights, biases  # attribute → (D, K), (K,)
        self.names = names  # attribute → K class names

    @property
    def attributes(self) -> list[str]:
        """The attribute names, in the order they were fitted."""
        return list(self.names)

    @classmethod
    def fit(cls, features: torch.Tensor, labels: dict[str, torch.Tensor], names: dict[str, list[str]],
            steps: int = 200, lr: float = 1e-2) -> ProbeCaptioner:
        """Fit one probe per attribute.

        Args:
            features: ``(N, D)`` frozen encoder features (e.g. EfficientNet-Lite0's pooled ``(N, 1280)``).
            labels: attribute → ``(N,)`` class indices.
            names: attribute → the class names (index ``k`` is called ``names[attribute][k]``); same keys as labels.
            steps, lr: full-batch Adam steps and learning rate. The weights start at zero and every step sees the
                whole set, so no random number is drawn: the same inputs always give the same probe.
        """
        features = _check_features(features)
        if set(labels) != set(names):
            raise ValueError(f"labels and names must have the same attributes, got {sorted(labels)} and "
                             f"{sorted(names)}.")
        if not labels:
            raise ValueError("no attributes given: pass labels={'colour': ..., 'shape': ...} and matching names.")
        mean, std = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)  # constant features: no division by 0
        x = (features - mean) / std
        weights, biases = {}, {}
        for attribute in names:
            y = torch.as_tensor(labels[attribute]).long().flatten()
            if y.shape[0] != features.shape[0]:
                raise ValueError(f"{features.shape[0]} feature rows but {y.shape[0]} labels for {attribute!r}.")
            classes = len(names[attribute])
            if y.numel() and not (0 <= y.min() and y.max() < classes):
                raise ValueError(f"labels for {attribute!r} must be indices into its {classes} names.")
            weight = torch.zeros(x.shape[1], classes, requires_grad=True)
            bias = torch.zeros(classes, requires_grad=True)
            optimizer = torch.optim.Adam([weight, bias], lr=lr)
            with torch.enable_grad():  # fit() may be called inside torch.no_grad(), e.g. next to the frozen encoder
                for _ in range(steps):
                    loss = F.cross_entropy(x @ weight + bias, y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            weights[attribute], biases[attribute] = weight.detach(), bias.detach()
        return cls(mean, std, weights, biases, {attribute: list(names[attribute]) for attribute in names})

    def predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Attribute → ``(N,)`` predicted class indices."""
        features = _check_features(features)
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"the features are {features.shape[1]} wide but the probes were fitted on "
                             f"{self.mean.shape[0]}-wide features.")
        x = (features - self.mean) / self.std
        return {attribute: (x @ self.weights[attribute] + self.biases[attribute]).argmax(dim=1)
                for attribute in self.names}

    def describe(self, features: torch.Tensor, template: str = "a {colour} {shape}") -> list[str]:
        """One caption per row: ``template`` with every ``{attribute}`` replaced by its predicted class name."""
        keys = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
        unknown = sorted(keys - set(self.names))
        if unknown:
            raise ValueError(f"template {template!r} uses unknown attribute(s) {unknown}; the known attributes are "
                             f"{self.attributes}.")
        predictions = self.predict(features)
        return [template.format(**{attribute: self.names[attribute][predictions[attribute][n].item()]
                                   for attribute in self.names})
                for n in range(features.shape[0])]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{attribute}: {len(classes)}" for attribute, classes in self.names.items())
        return f"ProbeCaptioner(features={self.mean.shape[0]}, classes={{{sizes}}})"
