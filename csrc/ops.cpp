// Every inrflow::* op schema, and the module init of inrflow._C.
//
// The schemas live here and only here, each with its one-line contract; the kernels are
// registered per device with TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp and (WITH_CUDA builds)
// csrc/cuda/*.cpp, which share their argument checks through csrc/checks.h. Autograd formulas and
// fake (meta) kernels are registered from Python (inrflow/ops/_registry.py).
//
// Importing inrflow._C loads this library, whose static initialisers register the schemas and
// kernels with the dispatcher; the Python module itself is empty (no pybind11), which keeps the
// extension compatible with Py_LIMITED_API.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(inrflow, m) {
  // [..., C] -> [..., C * 2F (+ C)]: [x | sin(x_c f_k) at c*F+k | cos(x_c f_k) at c*F+k].
  m.def("fourier_embed(Tensor x, Tensor freqs, bool include_input=False) -> Tensor");
  // Gradient w.r.t. x from the forward *output* (its sin/cos blocks are the derivatives), so no
  // transcendental math is redone: C = out.size(-1) / (2F + include_input).
  m.def(
      "fourier_embed_backward(Tensor grad_out, Tensor out, Tensor freqs, bool include_input) "
      "-> Tensor");

  // Index of the nearest centre (squared Euclidean, ties to the lowest index), int64 [N] / [B, N].
  m.def("nearest_assign(Tensor points, Tensor centers) -> Tensor");
  // Nearest cell centre of a regular grid over [low, high] (row-major flat index), O(1) per point.
  m.def("grid_assign(Tensor points, int[] grid_shape, float[] low, float[] high) -> Tensor");
  // (perm int64 [B, N] stable argsort of each row, offsets int32 [B*num_groups + 1]).
  m.def("group_layout(Tensor assign, int num_groups) -> (Tensor, Tensor)");

  // One query per group attends to its group's keys: q [G, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv],
  // offsets [G+1] (CSR), Hq % Hkv == 0. Returns out [G, Hq, Dv]; empty groups give zeros.
  m.def(
      "grouped_cross_attention(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale) "
      "-> Tensor");
  // The same, also returning the log-sum-exp [G, Hq] (float32; float64 for fp64 inputs; -inf for
  // empty groups) that the backward needs. Autograd is attached to this op in Python.
  m.def(
      "grouped_cross_attention_forward(Tensor q, Tensor k, Tensor v, Tensor offsets, "
      "float scale) -> (Tensor, Tensor)");
  // (dq, dk, dv) from grad_out, the inputs and the forward's out and lse.
  m.def(
      "grouped_cross_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, "
      "Tensor offsets, Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");

  // The CPU kernels' cache of large output buffers (csrc/cpu/output_cache.h): sets the bound on
  // the idle bytes it keeps (0 disables it and frees them, negative leaves it), returns the
  // previous bound.
  m.def("cpu_output_cache_limit(int limit_bytes) -> int");
  // [limit_bytes, idle_bytes, live_bytes, hits, misses] of that cache.
  m.def("cpu_output_cache_stats() -> int[]");
}

extern "C" {
// `import inrflow._C` only needs a module object; the ops are reached through torch.ops.inrflow.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // m_name
      nullptr,  // m_doc
      -1,       // m_size
      nullptr,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  return PyModule_Create(&module_def);
}
}
