// inrflow::* op schemas, their CPU kernels, and the module init of inrflow._C.
//
// Importing inrflow._C loads this library, whose static initialisers register the schemas and
// kernels with the dispatcher; the Python module itself is empty (no pybind11), which keeps the
// extension compatible with Py_LIMITED_API. CUDA kernels are registered in csrc/cuda/*.cpp.
#include <Python.h>
#include <torch/library.h>

#include "cpu/fourier_ops.h"

TORCH_LIBRARY(inrflow, m) {
  // [..., C] -> [..., C * 2F (+ C)]: [x | sin(x_c f_k) at c*F+k | cos(x_c f_k) at c*F+k].
  m.def("fourier_embed(Tensor x, Tensor freqs, bool include_input=False) -> Tensor");
  // Gradient w.r.t. x from the forward *output* (its sin/cos blocks are the derivatives), so no
  // transcendental math is redone: C = out.size(-1) / (2F + include_input).
  m.def(
      "fourier_embed_backward(Tensor grad_out, Tensor out, Tensor freqs, bool include_input) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(inrflow, CPU, m) {
  m.impl("fourier_embed", &inrflow::fourier_embed_cpu);
  m.impl("fourier_embed_backward", &inrflow::fourier_embed_backward_cpu);
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
