"""Compute buffers under llama.cpp's Vulkan backend, from an op-level model of the graph llama.cpp reserves.

llama.cpp sizes each backend's compute buffer by reserving its worst-case graph (``graph_reserve`` with
``n_ubatch`` tokens, every one an output) and letting ggml-alloc place every tensor in the buffer of the backend
its op runs on; the buffer is the allocator's peak. Where an op runs is ggml-backend's scheduler
(``ggml_backend_sched_split_graph``), and on Vulkan it depends on sizes: ``ggml_backend_vk_device_supports_op``
refuses an op any of whose sources or whose result exceeds the device's ``maxStorageBufferRange`` (128 MiB on
Mesa's software device lavapipe, about 4 GiB on real drivers), so at large ubatches or long contexts single ops
leave the device, and the scheduler's expansion passes decide where their neighbours go. A phase heuristic cannot
follow that; this module replays it:

1. :func:`block_graph` writes llama.cpp's graph as a list of its main ops (the ones that allocate memory or
   anchor the scheduler: matrix products with their weights, norms, attention, the expert FFN and its
   combination, the logits) with each result's size as a function of the ubatch, the KV cells and the
   hyper-parameters; the shapes of products come from the weights themselves, so an architecture is a variant
   of a few block recipes (standard attention with optional biases, Q/K norms and sinks; MLA; the gated delta
   net of hybrid models; dense, MoE and shared-expert FFNs), chosen by which tensors a block has;
2. :func:`schedule` assigns every op to a backend with the scheduler's passes: pre-allocated destinations (the
   KV cache) and graph inputs first, then the weight's backend (or, for a weight in host memory and a batch of
   at least 32, the first GPU that supports the op: op offload), then the four expansion passes, then the backend
   with the most supported inputs; it splits the graph where the backend changes and copies every input that
   lives elsewhere (activations and weights alike) into the split's backend;
3. :func:`allocate` runs ggml-alloc's dynamic allocator (best fit over free blocks, 1 GiB chunks, in-place reuse
   for the ops ggml allows it, frees after the last use, graph inputs first) per backend and returns each one's
   peak. Its rules were checked against ggml-alloc's own allocation trace (ggml-alloc.c built with AT_PRINTF and
   preloaded into the Vulkan build) on the loads the oracle missed.

Within a device's split the ops run in the order ggml-vulkan's graph optimiser gives them (independent ops hoisted
into concurrent sets, :func:`_optimised`), which decides which results are live together. What it leaves out: small
ops that allocate little and anchor nothing new (views, the router's sort and normalisation details, the graph of
one token; the gated delta net is the exception, modelled op by op, as its small results decided where a 128 MiB
cache copy fit) and the optimiser's fusion patterns, which move the holes best fit leaves by a few MiB and, rarely,
by a whole tensor: that is where the remaining errors on the oracle come from (docs/memory-oracle.md); and pipeline
parallelism (several GPUs with every layer offloaded: ggml-backend keeps up to four copies of each split input),
which one software device cannot show.

Sources: ggml/src/ggml-backend.cpp, ggml/src/ggml-alloc.c, ggml/src/ggml-vulkan/ggml-vulkan.cpp, src/llama-graph.cpp
and src/models/*.cpp of llama.cpp as vendored by llama-cpp-python 0.3.36; checked against the Vulkan oracle
(benchmarks/memory_oracle.py --backend gpu, docs/memory-oracle.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from moeplace.hardware import Device
from moeplace.memory import OP_OFFLOAD_MIN_BATCH, RunConfig, context_shape, is_mla, kv_bytes_per_layer
from moeplace.model import ModelDescription
from moeplace.placement import HOST, Placement

CHUNK = 1 << 30  # ggml-vulkan's suballocation_block_size: the allocator's largest chunk, device and pinned host
ALIGN = 256  # minStorageBufferOffsetAlignment-sized rounding of every tensor (lavapipe and most drivers: <= 256)

# ggml_op_can_inplace: a result may take its parent's memory (same layout, parent used once)
INPLACE = frozenset({"ADD", "MUL", "DIV", "SCALE", "RMS_NORM", "ROPE", "SOFT_MAX", "UNARY", "CLAMP", "ADD_ID"})
# ggml_vk_get_op_batch_size: the batch that op offload compares with OP_OFFLOAD_MIN_BATCH
_NO_BATCH = frozenset({"GET_ROWS"})


@dataclass
class Op:
    """One node of the graph: its result's bytes and its sources, by name. Sources are earlier ops, weights
    (``w:`` + tensor name), KV caches (``kv:``) or graph inputs (``in:``)."""

    name: str
    op: str
    nbytes: int
    srcs: tuple[str, ...]
    batch: int = 0  # rows for op offload
    dst_of: str | None = None  # writes into this pre-allocated tensor (SET_ROWS/CPY into the cache): no allocation
    output: bool = False  # a graph output: never freed
    view_sizes: Mapping[str, int] = field(default_factory=dict)  # a source used through a view of this size
    inplace: bool = True  # may take its parent's memory when its op allows (False: it reads a reshaped view)
    viewed: tuple[str, ...] = ()  # sources it reads through a reshape or view, which ggml-alloc never takes over
    # graph nodes just before it that are left out here (views, reshapes), which fill the optimiser's window; None
    # where a block is not modelled node by node (then an op stands for 1.25 graph nodes, the average)
    extra: int | None = None
    through: bool = False  # it reads those views, which the optimiser places only after a set of real ops


@dataclass(frozen=True, eq=False)
class Graph:
    """The ops in graph order, the pre-allocated tensors they read (name -> (owner, bytes, is a weight); the owner
    is the weight's tensor name, or the layer index of a KV or recurrent cache) and the graph inputs (host)."""

    ops: tuple[Op, ...]
    leaves: Mapping[str, tuple[str | int, int, bool]]
    inputs: Mapping[str, int]

    @cached_property
    def sizes(self) -> dict[str, int]:
        out = {n: b for n, (_, b, _) in self.leaves.items()}
        out.update(self.inputs)
        out.update((o.name, o.nbytes) for o in self.ops)
        return out

    @cached_property
    def largest(self) -> tuple[int, ...]:
        """Per op, its largest tensor, result or source (what ggml_backend_vk_device_supports_op compares)."""
        size = self.sizes
        return tuple(max([o.nbytes, *(o.view_sizes.get(s, size[s]) for s in o.srcs)]) for o in self.ops)

    @cached_property
    def weights_read(self) -> tuple[tuple[str, ...], ...]:
        """Per op, the weights it reads."""
        return tuple(tuple(s for s in o.srcs if s in self.leaves and self.leaves[s][2]) for o in self.ops)

    @cached_property
    def weight_src(self) -> tuple[str | None, ...]:
        """Per op, the first weight it reads (the scheduler's pass 1 follows it), None for none or for ROPE and
        FLASH_ATTN_EXT, whose small weights (rope factors, sinks) ggml ignores there."""
        return tuple(None if o.op in ("ROPE", "FLASH_ATTN_EXT") or not w else w[0]
                     for o, w in zip(self.ops, self.weights_read, strict=True))


class _Builder:
    def __init__(self, model: ModelDescription) -> None:
        self.model = model
        self.ops: list[Op] = []
        self.leaves: dict[str, tuple[str | int, int, bool]] = {}
        self.inputs: dict[str, int] = {}
        self.tensors = {t.name: t for t in model.tensors if t.loaded}
        self.n = 0
        self.exact = False  # the block being written lists every graph node (Op.extra)

    def w(self, name: str) -> str | None:
        t = self.tensors.get(name)
        if t is None:
            return None
        self.leaves["w:" + name] = (name, t.nbytes, True)
        return "w:" + name

    def inp(self, name: str, nbytes: int) -> str:
        self.inputs["in:" + name] = nbytes
        return "in:" + name

    def add(self, op: str, nbytes: int, *srcs: str | None, batch: int = 0, name: str = "",
            dst_of: str | None = None, output: bool = False, views: Mapping[str, int] | None = None,
            inplace: bool = True, viewed: tuple[str, ...] = (), extra: int | None = None,
            through: bool = False) -> str:
        self.n += 1
        if extra is None and self.exact:
            extra = 0
        nm = f"{name or op.lower()}#{self.n}"
        self.ops.append(Op(nm, op, nbytes, tuple(s for s in srcs if s), batch, dst_of, output, dict(views or {}),
                           inplace, viewed, extra, through))
        return nm

    def mat(self, wname: str, x: str, T: int, f32: int = 4, extra: int | None = None) -> str | None:
        """x @ W: [W's output width, T] f32."""
        t = self.tensors.get(wname)
        if t is None:
            return None
        width = t.shape[1] if len(t.shape) > 1 else 1  # a vector (qwen3next's shared-expert gate) gives one row
        return self.add("MUL_MAT", f32 * width * T, self.w(wname), x, batch=T, name=wname, extra=extra)

    def norm(self, x: str, nbytes: int, wname: str | None, T: int, inplace: bool = True) -> str:
        y = self.add("RMS_NORM", nbytes, x, batch=T, inplace=inplace)
        if wname and wname in self.tensors:
            y = self.add("MUL", nbytes, y, self.w(wname), batch=T)
        return y


@lru_cache(maxsize=8)
def block_graph(model: ModelDescription, cfg: RunConfig) -> Graph:
    """llama.cpp's worst-case prompt graph for ``cfg`` (``n_ubatch`` tokens, all outputs) as its main ops; where
    they run depends on the placement (:func:`schedule`), what they are does not, so a planner's many placements
    share one graph."""
    hp = model.hparams
    shape = context_shape(model, cfg)
    T = shape.n_ubatch
    E = hp.n_embd
    fa = cfg.flash_attn
    b = _Builder(model)
    kv = {x.layer: x for x in kv_bytes_per_layer(model, cfg)}
    tokens = b.inp("inp_tokens", 4 * T)
    # the embeddings input of a batch given as vectors: allocated with the other inputs even when the batch is
    # tokens, and never freed, as nothing reads it (ggml_backend_sched_split_graph's pass 6, llm_graph_input_embd)
    b.inp("inp_embd", 4 * E * T)
    pos = b.inp("inp_pos", 4 * T)
    masks: dict[str, str] = {}

    def mask(kind: str, cells: int) -> str:
        """One mask input per cache (the full one and the window's), whatever their sizes."""
        if kind not in masks:
            masks[kind] = b.inp(f"kq_mask_{kind}", (2 if fa else 4) * cells * T)
        return masks[kind]

    x = b.add("GET_ROWS", 4 * E * T, b.w("token_embd.weight"), tokens, name="embd")
    mla = is_mla(model)
    for layer in model.layers:
        il = layer.index
        if layer.nextn or il >= hp.n_layer:
            continue
        p = f"blk.{il}."
        cache = kv.get(il)
        cells = cache.cells if cache else 0
        inp_x = x
        h = b.norm(x, 4 * E * T, p + "attn_norm.weight", T)
        if layer.attention == "recurrent":
            states = (f"rs:r{il}", f"rs:s{il}")
            b.leaves[states[0]] = (il, cache.k_bytes if cache else 0, False)
            b.leaves[states[1]] = (il, cache.v_bytes if cache else 0, False)
            a = _delta_net(b, p, h, T, states)
        elif layer.attention == "none" or cache is None or not cache.total:
            a = None
        else:
            kname, vname = f"kv:k{il}", f"kv:v{il}"
            b.leaves[kname] = (il, cache.k_bytes, False)
            if cache.v_bytes:
                b.leaves[vname] = (il, cache.v_bytes, False)
            kind = "swa" if hp.swa_layers[il] else "full"
            m = mask(kind, cells)
            if mla:
                a = _mla(b, p, h, T, E, cells, fa, kname, m, pos, cache.k_bytes)
            else:
                a = _attention(b, p, h, T, E, cells, fa, kname, vname, m, pos, kind)
        if a is not None:  # the delta net's output is reshaped first: the residual takes the input's memory
            rec = layer.attention == "recurrent"
            x = b.add("ADD", 4 * E * T, a, inp_x, batch=T, name="ffn_inp", viewed=(a,) if rec else (),
                      extra=1 if rec else None, through=rec)
        ffn_in = x
        post = p + ("post_attention_norm.weight" if p + "post_attention_norm.weight" in b.tensors
                    else "ffn_norm.weight")
        h = b.norm(x, 4 * E * T, post, T)
        f = _ffn(b, p, h, T, E)
        if f is not None:
            x = b.add("ADD", 4 * E * T, f, ffn_in, batch=T, name="l_out")
    h = b.norm(x, 4 * E * T, "output_norm.weight", T)
    out_w = "output.weight" if "output.weight" in b.tensors else "token_embd.weight"
    b.add("MUL_MAT", 4 * hp.n_vocab * T, b.w(out_w), h, batch=T, name="result_output", output=True)
    return Graph(tuple(b.ops), b.leaves, b.inputs)


def _attention(b: _Builder, p: str, h: str, T: int, E: int, cells: int, fa: bool, kname: str, vname: str,
               m: str, pos: str, kind: str) -> str:
    """A block's attention; ``kind`` names its cache (full or swa), whose write indices are inputs of their own
    (an iSWA model has two sets, which ggml-alloc places apart)."""
    hp = b.model.hparams
    H = hp.n_head
    fused = b.mat(p + "attn_qkv.weight", h, T) if p + "attn_qkv.weight" in b.tensors else None
    gate = None
    parts: dict[str, str | None] = {}
    for name in QKV_ORDER.get(b.model.arch, "qvk"):  # each projection with its bias, norm and rope
        x = fused or b.mat(p + f"attn_{name}.weight", h, T)
        if x is None:
            parts[name] = None
            continue
        nbytes = next(o.nbytes for o in reversed(b.ops) if o.name == x)
        if name == "q" and nbytes > 4 * H * hp.head_dim_k * T and not fused:
            gate = x  # a gated query (qwen3next): attn_q gives the query and the output gate side by side
            nbytes = 4 * H * hp.head_dim_k * T
        if p + f"attn_{name}.bias" in b.tensors:
            x = b.add("ADD", nbytes, x, b.w(p + f"attn_{name}.bias"), batch=T)
        # the projection is reshaped to heads before its norm or rope, which then read a view: the result does not
        # take the projection's memory (ggml-alloc's own trace; Vulkan0 exact to 1 MiB in 259 of 288 oracle loads
        # with this rule, 174 without)
        reshaped = False
        if name != "v" and p + f"attn_{name}_norm.weight" in b.tensors:
            x = b.norm(x, nbytes, p + f"attn_{name}_norm.weight", T, inplace=reshaped)
            reshaped = True
        if name != "v":
            x = b.add("ROPE", nbytes, x, pos, batch=T, inplace=reshaped)
        parts[name] = x
    q, k, v = parts["q"], parts["k"], parts["v"]
    b.add("SET_ROWS", 0, k, b.inp(f"k_idxs_{kind}", 8 * T), kname, dst_of=kname)
    if vname in b.leaves:
        v_row = b.leaves[vname][1] // max(1, cells) // 2  # without flash attention V is stored transposed
        b.add("SET_ROWS", 0, v, b.inp(f"v_idxs_{kind}", 8 * T if fa else 8 * T * v_row), vname, dst_of=vname)
    vsrc = vname if vname in b.leaves else kname
    sinks = b.w(p + "attn_sinks.weight")
    dv = hp.head_dim_v
    if fa:
        o = b.add("FLASH_ATTN_EXT", 4 * H * dv * T, q, kname, vsrc, m, sinks, batch=T)
    else:
        kq = b.add("MUL_MAT", 4 * cells * T * H, kname, q, batch=T, name="kq")
        kq = b.add("SOFT_MAX", 4 * cells * T * H, kq, m, sinks, batch=T)
        o = b.add("MUL_MAT", 4 * dv * T * H, vsrc, kq, batch=T, name="kqv")
        o = b.add("CONT", 4 * dv * T * H, o, batch=T)
    if gate is not None:
        g = b.add("CONT", 4 * H * dv * T, gate, batch=T)
        g = b.add("UNARY", 4 * H * dv * T, g, batch=T)
        # flash attention's result is reshaped first, so the product takes the gate's memory (ggml-alloc's trace)
        o = b.add("MUL", 4 * H * dv * T, o, g, batch=T, viewed=(o,) if fa else ())
    out = b.mat(p + "attn_output.weight", o, T) or o
    if p + "attn_output.bias" in b.tensors:
        out = b.add("ADD", 4 * E * T, out, b.w(p + "attn_output.bias"), batch=T)
    return out


def _mla(b: _Builder, p: str, h: str, T: int, E: int, cells: int, fa: bool, kname: str, m: str, pos: str,
         k_bytes: int) -> str:
    hp = b.model.hparams
    md, arch = b.model.metadata, b.model.arch
    H, rank, rope = hp.n_head, hp.kv_lora_rank, hp.n_rot
    dv = int(md.get(f"{arch}.attention.value_length_mla", 0) or hp.head_dim_v)
    if p + "attn_q_a.weight" in b.tensors:
        q = b.mat(p + "attn_q_a.weight", h, T)
        q = b.norm(q, 4 * hp.q_lora_rank * T, p + "attn_q_a_norm.weight", T)
        q = b.mat(p + "attn_q_b.weight", q, T)
    else:
        q = b.mat(p + "attn_q.weight", h, T)
    qn = b.add("MUL_MAT", 4 * rank * H * T, b.w(p + "attn_k_b.weight"), q, batch=T, name="q_nope_absorbed")
    qp = b.add("ROPE", 4 * rope * H * T, q, pos, batch=T, name="q_pe")
    qc = b.add("CONCAT", 4 * (rank + rope) * H * T, qn, qp, batch=T, name="Qcur")
    kv = b.mat(p + "attn_kv_a_mqa.weight", h, T)
    kc = b.norm(kv, 4 * rank * T, p + "attn_kv_a_norm.weight", T)
    kp = b.add("ROPE", 4 * rope * T, kv, pos, batch=T)
    kcur = b.add("CONCAT", 4 * (rank + rope) * T, kc, kp, batch=T)
    b.add("SET_ROWS", 0, kcur, b.inp("k_idxs", 8 * T), kname, dst_of=kname)
    if fa:
        o = b.add("FLASH_ATTN_EXT", 4 * rank * H * T, qc, kname, m, batch=T)
    else:
        kq = b.add("MUL_MAT", 4 * cells * T * H, kname, qc, batch=T, name="kq")
        kq = b.add("SOFT_MAX", 4 * cells * T * H, kq, m, batch=T)
        vc = b.add("CONT", k_bytes * rank // (rank + rope), kname, batch=T, name="v_cont")
        o = b.add("MUL_MAT", 4 * rank * T * H, vc, kq, batch=T, name="kqv")
    o = b.add("MUL_MAT", 4 * dv * H * T, b.w(p + "attn_v_b.weight"), o, batch=T, name="v_mla")
    o = b.add("CONT", 4 * dv * H * T, o, batch=T)
    return b.mat(p + "attn_output.weight", o, T) or o


def _delta_net(b: _Builder, p: str, h: str, T: int, states: tuple[str, str]) -> str:
    """The gated delta net of hybrid models (qwen3next), op by op as llm_build_delta_net_base and qwen3next.cpp
    give it (ggml-alloc's own trace on the one oracle load it decided): each state gathered from the recurrent
    cache (cleared and copied in place there, so it runs where the cache lives), the fused qkv projection and
    the convolution over it with the old conv state (its last columns written back), the L2-normed q/k heads
    repeated to the value heads, beta and the decay gate from ``ssm_beta_alpha``, the delta rule (its new state
    written back), the gated norm and the output projection. Norms and the gate's SiLU read reshaped views, so
    they take fresh memory."""
    r, s = states
    rb, sb = b.leaves[r][1], b.leaves[s][1]
    b.exact = True
    ids = b.inp("rs_ids", 4)

    def gather(cache: str, nbytes: int) -> str:
        b.add("SCALE", 0, cache, dst_of=cache, extra=2, through=True)  # build_rs clears the unused states in place
        got = b.add("GET_ROWS", nbytes, cache, ids, extra=1, through=True)
        b.add("CPY", 0, cache, dst_of=cache, extra=3, through=True)  # and copies the extra states back
        return got

    conv_state = gather(r, rb)
    qkv = b.mat(p + "attn_qkv.weight", h, T) or h
    w = next((o.nbytes for o in reversed(b.ops) if o.name == qkv), 0)
    conv = b.add("CONCAT", w + rb, conv_state, qkv, batch=T, extra=3, through=True)
    b.add("CPY", 0, conv, r, dst_of=r, extra=1, through=True)  # the last d_conv columns, a view the size of conv
    state = gather(s, sb)
    conv = b.add("SSM_CONV", w, conv, b.w(p + "ssm_conv1d.weight"), batch=T)
    conv = b.add("UNARY", w, conv, batch=T)
    g = b.tensors.get(p + "attn_gate.weight")
    gw = 4 * g.shape[1] * T if g is not None else w  # the value heads
    qk = max(0, (w - gw) // 2)  # q and k heads before the repeat
    heads = []
    for v in (1, 2):  # each head's chain as the graph holds it: view, L2 norm (rms_norm, scale), repeat, reshape
        x = b.add("RMS_NORM", qk, conv, batch=T, inplace=False, extra=v, through=True)
        x = b.add("SCALE", qk, x, batch=T)
        heads.append(b.add("REPEAT", gw, x, batch=T, extra=1, through=True))
    ba = b.mat(p + "ssm_ba.weight", h, T, extra=2)  # after the reshaped k and the view of v
    gate = beta = None
    if ba is not None:
        half = next(o.nbytes for o in reversed(b.ops) if o.name == ba) // 2
        a = b.add("CONT", half, ba, batch=T, extra=2, through=True)
        a = b.add("ADD", half, a, b.w(p + "ssm_dt.bias"), batch=T)
        a = b.add("UNARY", half, a, batch=T)  # softplus
        gate = b.add("MUL", half, a, b.w(p + "ssm_a"), batch=T)
        # the views before it and before the delta rule are counted 2 and 2, as ggml-alloc's trace at -ub 2048 gives
        # the order (4 and 1, as read from the host-layer trace, put the beta sigmoid beside the gate's SiLU: +32 MiB)
        beta = b.add("CONT", half, ba, batch=T, extra=2, through=True)
        beta = b.add("UNARY", half, beta, batch=T)  # sigmoid
    o = b.add("GATED_DELTA_NET", gw + sb, *heads, conv, gate, beta, state, batch=T, extra=2, through=True)
    b.add("CPY", 0, o, s, dst_of=s, views={o: sb}, extra=1, through=True)  # the new state, a view of the result
    o = b.add("RMS_NORM", gw, o, batch=T, inplace=False, extra=1, through=True)
    o = b.add("MUL", gw, o, b.w(p + "ssm_norm.weight"), batch=T)
    z = b.mat(p + "attn_gate.weight", h, T)
    if z is not None:
        z = b.add("UNARY", gw, z, batch=T, inplace=False, extra=1, through=True)
        o = b.add("MUL", gw, o, z, batch=T)
    out = b.tensors.get(p + "ssm_out.weight")
    if out is not None:
        o = b.add("MUL_MAT", 4 * out.shape[1] * T, b.w(p + "ssm_out.weight"), o, batch=T, extra=1, through=True)
    b.exact = False
    return o


def _ffn(b: _Builder, p: str, h: str, T: int, E: int) -> str | None:
    hp = b.model.hparams
    out = None
    if p + "ffn_gate_inp.weight" in b.tensors and p + "ffn_down_exps.weight" in b.tensors:
        n_exp, used = hp.n_expert, hp.n_expert_used
        logits = b.mat(p + "ffn_gate_inp.weight", h, T)
        # softmax gating with normalised weights is ggml-vulkan's fused top-k pattern: its input (the logits) stays
        # live to the pattern's end, the softmax takes fresh memory, and so does the division (its sources a
        # reshaped view and a row sum of another layout)
        fused = p + "exp_probs_b.bias" not in b.tensors and p + "ffn_gate_inp.bias" not in b.tensors
        probs = b.add("SOFT_MAX", 4 * n_exp * T, logits, b.w(p + "ffn_gate_inp.bias"), batch=T,
                      viewed=(logits,) if fused else ())
        if p + "exp_probs_b.bias" in b.tensors:
            probs = b.add("ADD", 4 * n_exp * T, probs, b.w(p + "exp_probs_b.bias"), batch=T)
        order = b.add("ARGSORT", 4 * n_exp * T, probs, batch=T)
        weights = b.add("GET_ROWS", 4 * used * T, probs, order)
        if fused:
            total = b.add("SUM_ROWS", 4 * T, weights, batch=T)
            total = b.add("CLAMP", 4 * T, total, batch=T)
            weights = b.add("DIV", 4 * used * T, weights, total, logits, batch=T, viewed=(weights, logits))
        else:
            weights = b.add("DIV", 4 * used * T, weights, batch=T)
        ff = b.tensors[p + "ffn_down_exps.weight"].shape[0]
        acts = []
        for kind in ("gate", "up"):
            name = p + f"ffn_{kind}_exps.weight"
            if name not in b.tensors:
                continue
            a = b.add("MUL_MAT_ID", 4 * ff * used * T, b.w(name), h, order, batch=T, name=f"ffn_moe_{kind}")
            if p + f"ffn_{kind}_exps.bias" in b.tensors:
                a = b.add("ADD_ID", 4 * ff * used * T, a, b.w(p + f"ffn_{kind}_exps.bias"), order, batch=T)
            acts.append(a)
        a = b.add("GLU", 4 * ff * used * T, *acts, batch=T) if len(acts) == 2 else b.add(
            "UNARY", 4 * ff * used * T, acts[0], batch=T)
        d = b.add("MUL_MAT_ID", 4 * E * used * T, b.w(p + "ffn_down_exps.weight"), a, order, batch=T,
                  name="ffn_moe_down")
        if p + "ffn_down_exps.bias" in b.tensors:
            d = b.add("ADD_ID", 4 * E * used * T, d, b.w(p + "ffn_down_exps.bias"), order, batch=T)
        d = b.add("MUL", 4 * E * used * T, d, weights, batch=T, name="ffn_moe_weighted")
        out = b.add("ADD", 4 * E * T, d, d, batch=T, name="ffn_moe_sum") if used > 1 else d
        for _ in range(used - 2):
            out = b.add("ADD", 4 * E * T, out, d, batch=T)
    for suffix in ("_shexp", ""):
        down = p + f"ffn_down{suffix}.weight"
        if down not in b.tensors:
            continue
        g = b.mat(p + f"ffn_gate{suffix}.weight", h, T)
        u = b.mat(p + f"ffn_up{suffix}.weight", h, T)
        acts = [x for x in (g, u) if x]
        width = 4 * b.tensors[down].shape[0] * T
        a = b.add("GLU", width, *acts, batch=T) if len(acts) == 2 else b.add("UNARY", width, *acts, batch=T)
        s = b.mat(down, a, T)
        if suffix and p + "ffn_gate_inp_shexp.weight" in b.tensors:
            gate = b.mat(p + "ffn_gate_inp_shexp.weight", h, T)
            gate = b.add("UNARY", 4 * T, gate, batch=T)  # its sigmoid
            s = b.add("MUL", 4 * E * T, s, gate, batch=T)
        out = b.add("ADD", 4 * E * T, out, s, batch=T) if out else s
    return out


# --- the scheduler ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Where each op runs, its sources as it reads them (a copy where the source lives on another backend), and the
    splits: (first op, the inputs copied into the split's backend as (source, copy name)); ``sizes`` has every
    tensor's bytes, copies included."""

    backends: list[str]
    srcs: list[tuple[str, ...]]
    splits: list[tuple[int, list[tuple[str, str]]]]
    sizes: dict[str, int]


def schedule(graph: Graph, placement: Placement, gpus: Sequence[Device], cfg: RunConfig) -> Schedule:
    """Backends per op (``ggml_backend_sched_split_graph`` passes 1-4) and the splits with their copies (pass 5):
    weights live where ``placement`` puts them, a layer's caches with the layer (the host under
    ``--no-kv-offload``)."""
    op_offload = cfg.op_offload
    backends = [g.name for g in gpus] + [HOST]
    cpu = len(backends) - 1
    limit = [g.max_tensor or (1 << 62) for g in gpus] + [1 << 62]
    size = dict(graph.sizes)
    largest, weight_src, weights_read = graph.largest, graph.weight_src, graph.weights_read
    where: dict[str, int] = {}
    for n, (owner, _, weight) in graph.leaves.items():
        if weight:
            dev = placement.tensor_devices.get(str(owner), HOST)
        else:
            dev = HOST if cfg.no_kv_offload else placement.layer_devices[int(owner)]
        where[n] = backends.index(dev) if dev in backends else cpu
    for n in graph.inputs:
        where[n] = cpu

    def supports(bi: int, i: int) -> bool:
        return largest[i] <= limit[bi]

    node: list[int] = []
    for i, o in enumerate(graph.ops):  # pass 1
        bi = -1
        ws = weight_src[i]
        if o.dst_of is not None:
            bi = where[o.dst_of] if supports(where[o.dst_of], i) else cpu
        elif ws is not None:
            wb = where[ws]
            if wb == cpu:
                if op_offload and o.op not in _NO_BATCH and o.batch >= OP_OFFLOAD_MIN_BATCH:
                    bi = next((g for g in range(cpu) if supports(g, i)), cpu)
                else:
                    bi = cpu
            else:
                bi = wb if supports(wb, i) else -1  # a device weight on an op the device refuses
        node.append(bi)

    def expand(order: range, gpu_only: bool) -> None:
        cur = -1
        for i in order:
            if node[i] != -1:
                cur = -1 if (gpu_only and node[i] == cpu) else node[i]
            elif cur != -1 and supports(cur, i):
                node[i] = cur

    n = len(graph.ops)
    expand(range(n), True)
    expand(range(n - 1, -1, -1), True)
    expand(range(n), False)
    expand(range(n - 1, -1, -1), False)
    for i, o in enumerate(graph.ops):  # pass 3: the backend with the most supported inputs
        if node[i] == -1:
            best = -1
            for bi in range(len(backends)):
                if supports(bi, i):
                    k = sum(1 for s in o.srcs if where.get(s, -1) == bi)
                    if k > best:
                        best, node[i] = k, bi
        where[o.name] = node[i]
    for i, o in enumerate(graph.ops):
        where[o.name] = node[i]
    # pass 5: splits and the copies of their inputs
    splits: list[tuple[int, list[tuple[str, str]]]] = []
    copies: dict[tuple[str, int], str] = {}
    read: list[tuple[str, ...]] = []
    cur = -2
    for i, o in enumerate(graph.ops):
        bi = node[i]
        new = bi != cur
        if not new and splits and splits[-1][1]:  # a weight from elsewhere starts a split (its copy is then freed)
            new = any(where[s] != bi for s in weights_read[i])
        if new:
            splits.append((i, []))
            cur = bi
        srcs = []
        for s in o.srcs:
            if where[s] != bi:
                key = (s, bi)
                if key not in copies:
                    copies[key] = f"{backends[bi]}#{s}"
                    splits[-1][1].append((s, copies[key]))
                    size[copies[key]] = o.view_sizes.get(s, size[s])
                    where[copies[key]] = bi
                s = copies[key]
            srcs.append(s)
        read.append(tuple(srcs))
    return Schedule([backends[b] for b in node], read, splits, size)


# --- the allocator ------------------------------------------------------------------------------------------


class _Tallocr:
    """ggml-alloc's ggml_dyn_tallocr: best fit over free blocks, the last block of a chunk growing it."""

    def __init__(self) -> None:
        self.chunks: list[list[list[int]]] = []  # per chunk: free blocks [offset, size], sorted by offset
        self.max: list[int] = []

    def alloc(self, size: int) -> tuple[int, int]:
        size = -(-size // ALIGN) * ALIGN
        best = None
        best_size = None
        for c, blocks in enumerate(self.chunks):
            for i, (_, bs) in enumerate(blocks[:-1]):
                if bs >= size and (best_size is None or bs <= best_size):
                    best, best_size = (c, i), bs
        if best is None:
            best_reuse = None
            for c, blocks in enumerate(self.chunks):
                if blocks:
                    off, bs = blocks[-1]
                    reuse = self.max[c] - off - size
                    better_reuse = best_reuse is None or (best_reuse < 0 and reuse > best_reuse)
                    better_fit = best_reuse is not None and reuse >= 0 and reuse < best_reuse
                    if bs >= size and (better_reuse or better_fit):
                        best, best_reuse = (c, len(blocks) - 1), reuse
        if best is None:
            self.chunks.append([[0, max(size, CHUNK)]])
            self.max.append(0)
            best = (len(self.chunks) - 1, 0)
        c, i = best
        block = self.chunks[c][i]
        addr = (c, block[0])
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.chunks[c][i]
        self.max[c] = max(self.max[c], addr[1] + size)
        return addr

    def free(self, addr: tuple[int, int], size: int) -> None:
        size = -(-size // ALIGN) * ALIGN
        c, off = addr
        blocks = self.chunks[c]
        for i, blk in enumerate(blocks):
            if blk[0] + blk[1] == off:
                blk[1] += size
                if i + 1 < len(blocks) and blk[0] + blk[1] == blocks[i + 1][0]:
                    blk[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if off + size == blk[0]:
                blk[0] = off
                blk[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == blk[0]:
                    blocks[i - 1][1] += blk[1]
                    del blocks[i]
                return
        blocks.append([off, size])
        blocks.sort()

    @property
    def size(self) -> int:
        return sum(self.max)


# The order llama.cpp's graph holds a block's projections in (the order build_attn expands them): q, v, k by default
QKV_ORDER = {"gpt-oss": "qkv"}

# ggml_vk_graph_optimize: a dependent op may join its source's concurrent set when the two fuse
_FUSES = frozenset({("RMS_NORM", "MUL"), ("UNARY", "MUL"), ("MUL_MAT", "ADD"), ("MUL_MAT_ID", "ADD_ID"),
                    ("MUL_MAT_ID", "MUL"), ("ADD", "ADD"), ("SSM_CONV", "ADD"), ("SSM_CONV", "UNARY")})
# ggml-vulkan looks 20 graph nodes ahead, views included: 16 of the ops modelled here where a block's views are not
# listed, fewer where they are (Op.extra, the delta net's)
OPTIMISER_WINDOW = 20


_ORDERS: dict[tuple[int, int, int, tuple[tuple[str, ...], ...]], tuple[Sequence[Op], list[int]]] = {}


def _optimised_cached(ops: Sequence[Op], srcs: Sequence[tuple[str, ...]], span: range) -> list[int]:
    """:func:`_optimised`, remembered: a planner's placements share most splits (the graph keeps its ops, the
    entry keeps the graph's, so an id is never reused under it)."""
    key = (id(ops), span.start, span.stop, tuple(srcs[span.start:span.stop]))
    hit = _ORDERS.get(key)
    if hit is not None and hit[0] is ops:
        return hit[1]
    if len(_ORDERS) > 8192:
        _ORDERS.clear()
    order = _optimised(ops, srcs, span)
    _ORDERS[key] = (ops, order)
    return order


def _optimised(ops: Sequence[Op], srcs: Sequence[tuple[str, ...]], span: range) -> list[int]:
    """The order ggml-vulkan's graph optimiser gives a split's ops (ggml_vk_graph_optimize): from the first op
    not yet placed, every later op within the window that reads no unplaced op of the window joins its set
    (a product's bias, a norm's weight: fused pairs join too), so independent products run together and their
    results are live together."""
    index: dict[str, int] = {}
    at: dict[int, float] = {}  # each op's position counting the graph nodes left out before it
    writers: dict[str, list[int]] = {}
    unseen: list[int] = []  # ops reading views not yet placed
    n = 0.0
    for i in span:
        o = ops[i]
        index[o.name] = i
        n += 1.25 if o.extra is None else 1 + o.extra
        at[i] = n
        if o.dst_of:
            writers.setdefault(o.dst_of, []).append(i)
        if o.through:
            unseen.append(i)
    # ops that touch a cache another op writes stay behind that op while it is unplaced (is_src_of's views)
    after: dict[int, list[int]] = {}
    if writers:
        users: dict[str, list[int]] = {}
        for i in span:
            for x in ops[i].srcs:
                if x in writers:
                    users.setdefault(x, []).append(i)
            x = ops[i].dst_of
            if x and (not users.get(x) or users[x][-1] != i):
                users.setdefault(x, []).append(i)
        for x, us in users.items():
            for k, j in enumerate(us):
                after.setdefault(j, []).extend(c for c in us[:k] if ops[c].dst_of == x or ops[j].dst_of == x)
    pending = set(unseen)
    placed: set[int] = set()
    order: list[int] = []
    first = span.start
    while first < span.stop:
        group = [first]
        for j in range(first + 1, span.stop):
            if at[j] >= at[first] + OPTIMISER_WINDOW:
                break
            if j in placed:
                continue
            ok = j not in pending and not any(c >= first and c not in placed for c in after.get(j, ()))
            for s in srcs[j] if ok else ():
                c = index.get(s)
                if c is None or c < first or c in placed:
                    continue
                if c == group[-1] and (ops[c].op, ops[j].op) in _FUSES and (j == c + 1 or ops[c].op != "MUL_MAT"):
                    continue
                ok = False
                break
            if ok:
                group.append(j)
        # second pass: the left-out views within the window whose sources are done (none after an ADD, which
        # would split a fusion); an op reading views can join only a later set
        if pending and ops[group[-1]].op != "ADD":
            done = placed.union(group)
            limit = at[first] + OPTIMISER_WINDOW
            for j in unseen:
                if at[j] - 1 >= limit:
                    break
                if j > first and j in pending and all(index.get(x, -1) < first or index[x] in done for x in srcs[j]):
                    pending.discard(j)
            unseen = [j for j in unseen if j in pending and j > first]
        placed.update(group)
        order += group
        while first < span.stop and first in placed:
            first += 1
    return order


def allocate(graph: Graph, sched: Schedule, names: Sequence[str],
             trace: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Each backend's compute buffer: ggml-alloc over the scheduler's graph copy (each split's input copies,
    then its ops), tensors freed after their last use. ``trace`` receives, per backend, what was live when its
    buffer last grew (for explaining a figure)."""
    size, backends = sched.sizes, sched.backends
    # (name, backend, srcs, allocates, the sources it may take in place)
    seq: list[tuple[str, str, tuple[str, ...], bool, tuple[str, ...]]] = []
    bounds = [i for i, _ in sched.splits] + [len(graph.ops)]
    for (start, inputs), end in zip(sched.splits, bounds[1:], strict=True):
        for src, cp in inputs:
            seq.append(("dep:" + cp, "", (src,), False, ()))
            seq.append((cp, backends[start], (), True, ()))
        span = range(start, end)
        for i in (span if backends[start] == HOST else _optimised_cached(graph.ops, sched.srcs, span)):
            o = graph.ops[i]
            own = tuple(c for s, c in zip(o.srcs, sched.srcs[i], strict=True) if s not in o.viewed)
            seq.append((o.name, backends[i], sched.srcs[i], o.dst_of is None and o.nbytes > 0,
                        own if o.inplace and o.op in INPLACE else ()))
    uses: dict[str, int] = {}
    for _, _, srcs, _, _ in seq:
        for s in srcs:
            uses[s] = uses.get(s, 0) + 1
    alloc = {n: _Tallocr() for n in names}
    addr: dict[str, tuple[str, tuple[int, int], int]] = {}
    outputs = {o.name for o in graph.ops if o.output}
    for n, nbytes in graph.inputs.items():  # graph inputs first; one nothing reads is never freed
        addr[n] = (HOST, alloc[HOST].alloc(nbytes), nbytes)
    for name, backend, srcs, allocates, inplace in seq:
        if allocates and name not in addr:
            nbytes = size[name]
            parent = next((s for s in inplace if s in addr and uses.get(s) == 1 and size.get(s) == nbytes
                           and s not in outputs and addr[s][0] == backend), None)
            if parent is not None:
                addr[name] = addr.pop(parent)
                uses[parent] = 0
            elif trace is None:
                addr[name] = (backend, alloc[backend].alloc(nbytes), nbytes)
            else:
                before = alloc[backend].size
                addr[name] = (backend, alloc[backend].alloc(nbytes), nbytes)
                if alloc[backend].size > before:
                    trace[backend] = [f"{n} {v[2] / 2**20:.1f}" for n, v in addr.items() if v[0] == backend]
        for s in srcs:
            left = uses[s] - 1
            uses[s] = left
            if left == 0 and s in addr and s not in outputs:
                b, a, nbytes = addr.pop(s)
                alloc[b].free(a, nbytes)
    return {n: a.size for n, a in alloc.items()}


_RESULTS: OrderedDict[tuple[object, ...], dict[str, int]] = OrderedDict()  # a planner scores a placement more than once


def vulkan_compute(model: ModelDescription, placement: Placement, cfg: RunConfig, gpus: Sequence[Device]
                   ) -> dict[str, int]:
    """Compute buffer bytes per device (the host's ``Vulkan_Host`` one under ``CPU``) for ``placement``."""
    key = (model, cfg, tuple(gpus), tuple(placement.layer_devices), tuple(sorted(placement.tensor_devices.items())))
    if key not in _RESULTS:
        graph = block_graph(model, cfg)
        sched = schedule(graph, placement, gpus, cfg)
        _RESULTS[key] = allocate(graph, sched, [g.name for g in gpus] + [HOST])
        if len(_RESULTS) > 256:
            _RESULTS.popitem(last=False)
    _RESULTS.move_to_end(key)
    return dict(_RESULTS[key])
