"""Darknet's recurrent layers: [crnn], [conv_lstm], [history] (src/crnn_layer.c, src/conv_lstm_layer.c) on images,
[rnn], [gru], [lstm] (src/rnn_layer.c, gru_layer.c, lstm_layer.c) on the flattened input.

Each is built from ordinary [convolutional] or [connected] sub-layers (their weights stored one after the other in
parser.c's load_weights order) and keeps a state from one call to the next.

Darknet's time rules (parse_net_options, parse_network_cfg_custom): a network is built with
batch = mini_batch * time_steps, and each recurrent layer walks `time_steps` steps of `mini_batch` images, the
input laid out step after step. Detection (detector test, demo, map) builds the network with batch 1 and
time_steps 1: every call is one step on one frame, starting from the state the previous call left (zeros after
loading; Darknet's CPU build never resets it).

darkpy, in eval mode: a batch of B images is B consecutive frames of one video, run in order, and the state
after the last frame is kept for the next call. So one call with B frames gives what B calls with one frame give,
and what Darknet gives on those frames one after the other. `reset_state()` (or `Darknet.reset_state()`) starts a
new video. In training mode: Darknet's layout, B = time_steps * mini_batch, starting from a zero state (what
Darknet's [crnn] and [rnn] do; its [lstm], [gru] and [conv_lstm] carry the state across training batches —
darkpy does not train recurrent networks the way Darknet does and says so, see training.settings).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from darkpy.cfg import Option, Section
from darkpy.layers.base import BuildContext, Layer, Shape, register
from darkpy.layers.basic import ConnectedLayer
from darkpy.layers.conv import ConvLayer

State = Tuple[torch.Tensor, ...]


def sub_section(parent: Section, section_type: str, values: Dict[str, object]) -> Section:
    """A [convolutional] or [connected] section for a sub-layer, with the parent's values and lines (so that a
    problem in it is reported at the parent's option)."""
    options = {key: Option(str(value), parent.options[key].line if key in parent.options else parent.line)
               for key, value in values.items()}
    return Section(section_type, parent.file, parent.line, options, written_type=parent.written_type)


class RecurrentLayer(Layer):
    """What every recurrent layer shares: the time steps, the carried state, the step loop, the sub-layers'
    weights in Darknet's order. Subclasses set `parts` (sub-layer names in load_weights order) and implement
    `initial_state` and `step`."""

    parts: Sequence[str] = ()

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        self.time_steps = ctx.time_steps
        self.state: Optional[State] = None

    def reset_state(self) -> None:
        """Forget the state: the next frame starts from zeros, as after loading."""
        self.state = None

    def forward(self, x, outputs):
        steps = self.time_steps if self.training else x.shape[0]
        if x.shape[0] % steps:
            raise ValueError(f"{self.section.file}:{self.section.line}: [{self.type}] in training the batch "
                             f"({x.shape[0]}) must be a multiple of [net] time_steps ({steps})")
        batch = x.shape[0] // steps
        state = self.carried_state(batch, x)
        ys = []
        for t in range(steps):
            y, state = self.step(x[t * batch:(t + 1) * batch], state)
            ys.append(y)
        self.state = None if self.training else tuple(s.detach() for s in state)
        return torch.cat(ys)

    def carried_state(self, batch: int, x: torch.Tensor) -> State:
        """The state the last call left (on x's device and dtype), or zeros: in training, after a reset, or when
        the batch of parallel sequences changed."""
        if self.training or self.state is None or self.state[0].shape[0] != batch:
            return self.initial_state(batch, x)
        state = tuple(s.to(x) for s in self.state)
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            state = tuple(s.clone() if s.is_inference() else s for s in state)  # left by an inference_mode call
        return state

    def initial_state(self, batch: int, x: torch.Tensor) -> State:  # pragma: no cover
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:  # pragma: no cover
        raise NotImplementedError

    def sub_layers(self) -> List[Layer]:
        return [getattr(self, name) for name in self.parts]

    def darknet_arrays(self) -> List[torch.Tensor]:
        return [t for part in self.sub_layers() for t in part.darknet_arrays()]

    def connected_weights(self) -> List[torch.Tensor]:
        return [t for part in self.sub_layers() for t in part.connected_weights()]

    def bflops(self) -> float:
        return sum(part.bflops() for part in self.sub_layers())

    def zeros(self, batch: int, shape: Shape, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((batch, *shape))


# ---------------------------------------------------------------------------------------------- on images


class ConvRecurrentLayer(RecurrentLayer):
    """A recurrent layer of convolutions: reads Darknet's convolution options once and builds the sub-layers."""

    def read_conv_options(self, s: Section, default_activation: str) -> Dict[str, object]:
        """What parse_crnn and parse_conv_lstm pass to every sub-convolution."""
        self.unsupported_if_set(s, ("xnor",), "is not supported by darkpy in a recurrent layer")
        size = s.get_int("size", 3)
        padding = s.get_int("padding", 0)
        if s.get_int("pad", 0):
            padding = size // 2
        return {"size": size, "stride": s.get_int("stride", 1), "dilation": s.get_int("dilation", 1),
                "padding": padding, "groups": s.get_int("groups", 1),
                "activation": self.activation_of(s, default_activation)[0],
                "batch_normalize": s.get_int("batch_normalize", 0)}

    def conv(self, s: Section, options: Dict[str, object], in_shape: Shape, filters: int) -> ConvLayer:
        """One sub-convolution; Darknet asserts its output has the input's height and width (the state is both)."""
        layer = ConvLayer(sub_section(s, "convolutional", {**options, "filters": filters}),
                          BuildContext(index=self.index, input_shape=in_shape))
        if layer.out_shape[1:] != in_shape[1:]:
            raise s.error(f"its convolutions (size={options['size']}, stride={options['stride']}, padding="
                          f"{options['padding']}) turn {in_shape[2]}x{in_shape[1]} into {layer.out_shape[2]}x"
                          f"{layer.out_shape[1]}: the state must keep the input's size (Darknet asserts it)", "size")
        return layer


@register("crnn")
class CrnnLayer(ConvRecurrentLayer):
    """[crnn] (forward_crnn_layer): state = act(input_conv(x)) + act(self_conv(state)) (plus the old state with
    shortcut=1); output = act(output_conv(state)). Three convolutions, each with its own batch norm, never fused
    (Darknet's fuse_conv_batchnorm does not reach them)."""

    parts = ("input_layer", "self_layer", "output_layer")

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        c, h, w = self.in_shape
        options = self.read_conv_options(s, "logistic")
        self.output_filters = s.get_int("output", 1)
        self.hidden_filters = s.get_int("hidden", 1)
        self.shortcut = s.get_int("shortcut", 0)
        for key, value in (("output", self.output_filters), ("hidden", self.hidden_filters)):
            if value < 1:
                raise s.error(f"must be at least 1, got {value}", key)
        self.input_layer = self.conv(s, options, (c, h, w), self.hidden_filters)
        self.self_layer = self.conv(s, options, (self.hidden_filters, h, w), self.hidden_filters)
        self.output_layer = self.conv(s, options, (self.hidden_filters, h, w), self.output_filters)
        self.out_shape = self.output_layer.out_shape

    def initial_state(self, batch, x):
        return (self.zeros(batch, (self.hidden_filters, *self.in_shape[1:]), x),)

    def step(self, x, state):
        old = state[0]
        new = self.input_layer(x, []) + self.self_layer(old, [])
        if self.shortcut:
            new = old + new
        return self.output_layer(new, []), (new,)

    def describe(self) -> str:
        return f"{self.output_filters:5d} {self.input_layer.size:2d} x{self.input_layer.size:2d}/" \
               f"{self.input_layer.stride[1]:2d}"


@register("conv_lstm")
class ConvLstmLayer(ConvRecurrentLayer):
    """[conv_lstm] (forward_conv_lstm_layer): the LSTM with convolutions U (on the input), W (on the hidden
    state) and, with peephole=1, V (on the cell): f = σ(Wf h + Uf x + Vf c), i = σ(Wi h + Ui x + Vi c),
    g = tanh(Wg h + Ug x), c' = f c + i g, o = σ(Wo h + Uo x + Vo c'), h' = o tanh(c'); the output is h', and
    the cell kept for the next step is clamped to ±state_constrain (Darknet's default: 32 × time_steps, so 32
    at detection). Each sub-convolution applies `activation` (default linear) to its own output."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        c, h, w = self.in_shape
        options = self.read_conv_options(s, "linear")
        self.unsupported_if_set(s, ("bottleneck",), "exists only in Darknet's GPU build (its CPU forward has no "
                                                    "bottleneck path) and is not supported by darkpy")
        self.filters = s.get_int("output", 1)
        if self.filters < 1:
            raise s.error(f"must be at least 1, got {self.filters}", "output")
        self.peephole = s.get_int("peephole", 0)
        self.state_constrain = s.get_int("state_constrain", None)
        s.get_int("shortcut", 0)  # only acts with bottleneck=1 (GPU build)
        # Darknet's GPU build applies lstm_activation to g and to the cell for h; its CPU build always tanh
        self.lstm_activation = self.activation_of(s, "tanh", "lstm_activation")[1]
        self.training_only(s, ("time_normalizer",))
        hidden = (self.filters, h, w)
        names = (["vf", "vi", "vo"] if self.peephole else []) + ["wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"]
        for name in names:
            setattr(self, name, self.conv(s, options, (c, h, w) if name[0] == "u" else hidden, self.filters))
        self.parts = tuple(names)
        self.out_shape = self.uo.out_shape

    def constrain(self) -> float:
        if self.state_constrain is not None:
            return float(self.state_constrain)
        return 32.0 * (self.time_steps if self.training else 1)  # parse_conv_lstm: time_steps * 32

    def initial_state(self, batch, x):
        shape = (self.filters, *self.in_shape[1:])
        return self.zeros(batch, shape, x), self.zeros(batch, shape, x)  # h, c

    def step(self, x, state):
        h, c = state
        f = self.wf(h, []) + self.uf(x, [])
        i = self.wi(h, []) + self.ui(x, [])
        if self.peephole:
            f, i = f + self.vf(c, []), i + self.vi(c, [])
        f, i = torch.sigmoid(f), torch.sigmoid(i)
        g = self.lstm_activation(self.wg(h, []) + self.ug(x, []))
        c = f * c + i * g
        o = self.wo(h, []) + self.uo(x, [])
        if self.peephole:
            o = o + self.vo(c, [])
        h = torch.sigmoid(o) * self.lstm_activation(c)
        limit = self.constrain()
        if limit:
            c = c.clamp(-limit, limit)
        return h, (finite(h), finite(c))

    def bflops(self) -> float:
        per_element = 12 if self.peephole else 9  # make_conv_lstm_layer adds the gates' element-wise operations
        return super().bflops() + per_element * self.out_shape[0] * self.out_shape[1] * self.out_shape[2] / 1e9

    def describe(self) -> str:
        return f"{self.filters:5d} {self.uf.size:2d} x{self.uf.size:2d}/{self.uf.stride[1]:2d}"


def finite(x: torch.Tensor) -> torch.Tensor:
    """fix_nan_and_inf: a NaN or infinite value i of the flat array becomes 1/i (Darknet's 'pseudo random')."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return x
    index = torch.arange(x[0].numel(), device=x.device, dtype=x.dtype).view(x.shape[1:])
    return torch.where(bad, 1.0 / index, x)


@register("history")
class HistoryLayer(RecurrentLayer):
    """[history] (forward_history_layer): history_size × the channels. At detection (time_steps 1) Darknet copies
    the input into the first channels and the rest stays zero; with time_steps > 1 (training) each step's
    output is its input followed by the previous step's output less its last input-sized block."""

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        self.history_size = section.get_int("history_size", 4)
        if self.history_size < 1:
            raise section.error(f"must be at least 1, got {self.history_size}", "history_size")
        c, h, w = self.in_shape
        self.out_shape = (c * self.history_size, h, w)

    def forward(self, x, outputs):
        if not self.training or self.time_steps == 1:
            return torch.cat([x, x.new_zeros((x.shape[0], self.out_shape[0] - x.shape[1], *x.shape[2:]))], 1)
        return super().forward(x, outputs)

    def initial_state(self, batch, x):
        return (self.zeros(batch, self.out_shape, x),)

    def step(self, x, state):
        y = torch.cat([x, state[0][:, :self.out_shape[0] - x.shape[1]]], 1)
        return y, (y,)


# ---------------------------------------------------------------------------------------------- flat


class ConnectedRecurrentLayer(RecurrentLayer):
    """A recurrent layer of [connected] sub-layers on the flattened input; the output is (outputs, 1, 1)."""

    def connected(self, s: Section, inputs: int, outputs: int, activation: str) -> ConnectedLayer:
        values = {"output": outputs, "activation": activation, "batch_normalize": self.batch_normalize}
        return ConnectedLayer(sub_section(s, "connected", values),
                              BuildContext(index=self.index, input_shape=(inputs, 1, 1)))

    def read_outputs(self, s: Section) -> int:
        c, h, w = self.in_shape
        self.inputs_count = c * h * w
        self.batch_normalize = s.get_int("batch_normalize", 0)
        outputs = s.get_int("output", 1)
        if outputs < 1:
            raise s.error(f"must be at least 1, got {outputs}", "output")
        self.out_shape = (outputs, 1, 1)
        return outputs

    def forward(self, x, outputs):
        return super().forward(x.reshape(x.shape[0], -1), outputs).view(x.shape[0], -1, 1, 1)

    def describe(self) -> str:
        return f"{self.inputs_count:5d} -> {self.out_shape[0]:d}"


@register("rnn")
class RnnLayer(ConnectedRecurrentLayer):
    """[rnn] (forward_rnn_layer): [crnn]'s arithmetic with connected layers; `logistic=1|2` makes the self
    layer's activation logistic or loggy."""

    parts = ("input_layer", "self_layer", "output_layer")

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        s = section
        outputs = self.read_outputs(s)
        self.hidden = s.get_int("hidden", 1)
        if self.hidden < 1:
            raise s.error(f"must be at least 1, got {self.hidden}", "hidden")
        activation = self.activation_of(s, "logistic")[0]
        logistic = s.get_int("logistic", 0)
        self.shortcut = s.get_int("shortcut", 0)
        self_activation = "loggy" if logistic == 2 else "logistic" if logistic == 1 else activation
        self.input_layer = self.connected(s, self.inputs_count, self.hidden, activation)
        self.self_layer = self.connected(s, self.hidden, self.hidden, self_activation)
        self.output_layer = self.connected(s, self.hidden, outputs, activation)

    def initial_state(self, batch, x):
        return (x.new_zeros((batch, self.hidden)),)

    def step(self, x, state):
        old = state[0]
        new = self.input_layer(x, []).flatten(1) + self.self_layer(old, []).flatten(1)
        if self.shortcut:
            new = old + new
        return self.output_layer(new, []).flatten(1), (new,)


@register("gru")
class GruLayer(ConnectedRecurrentLayer):
    """[gru] (forward_gru_layer): z = σ(Uz x + Wz s), r = σ(Ur x + Wr s), h = σ(Uh x + Wh (r s)), and the new
    state and output z s + (1 - z) h. The logistic for h, not tanh: gru_layer.c chooses tanh only under a USET
    macro that no header it includes defines (in both its CPU and GPU forward)."""

    parts = ("input_z_layer", "input_r_layer", "input_h_layer", "state_z_layer", "state_r_layer", "state_h_layer")

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        outputs = self.read_outputs(section)
        for name in self.parts:
            inputs = self.inputs_count if name.startswith("input") else outputs
            setattr(self, name, self.connected(section, inputs, outputs, "linear"))

    def initial_state(self, batch, x):
        return (x.new_zeros((batch, self.out_shape[0])),)

    def step(self, x, state):
        s = state[0]
        z = torch.sigmoid(self.input_z_layer(x, []).flatten(1) + self.state_z_layer(s, []).flatten(1))
        r = torch.sigmoid(self.input_r_layer(x, []).flatten(1) + self.state_r_layer(s, []).flatten(1))
        h = torch.sigmoid(self.input_h_layer(x, []).flatten(1) + self.state_h_layer(s * r, []).flatten(1))
        out = z * s + (1 - z) * h
        return out, (out,)


@register("lstm")
class LstmLayer(ConnectedRecurrentLayer):
    """[lstm] (forward_lstm_layer): [conv_lstm]'s arithmetic with connected layers, without peephole or
    state_constrain: W on the hidden state, U on the input."""

    parts = ("wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo")

    def __init__(self, section, ctx: BuildContext):
        super().__init__(section, ctx)
        outputs = self.read_outputs(section)
        for name in self.parts:
            setattr(self, name, self.connected(section, self.inputs_count if name[0] == "u" else outputs, outputs,
                                               "linear"))

    def initial_state(self, batch, x):
        return x.new_zeros((batch, self.out_shape[0])), x.new_zeros((batch, self.out_shape[0]))  # h, c

    def step(self, x, state):
        h, c = state

        def gate(name):
            return getattr(self, "w" + name)(h, []).flatten(1) + getattr(self, "u" + name)(x, []).flatten(1)

        f, i, g, o = torch.sigmoid(gate("f")), torch.sigmoid(gate("i")), torch.tanh(gate("g")), torch.sigmoid(gate("o"))
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, (h, c)
