// The Python module of fastclip's optional native helper (built by fastclip/native.py): the
// functions of grad_key.cpp (reading gradients and their key) and cpu_math.cpp (CPU power sums
// and scaling), each documented in its file.
#include <Python.h>

PyObject* fastclip_collect(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_power_sum(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_scale_(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_openmp(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

namespace {

template <PyObject* (*F)(PyObject*, PyObject* const*, Py_ssize_t)>
PyCFunction fastcall() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(F));
}

PyMethodDef methods[] = {
    {"collect", fastcall<fastclip_collect>(), METH_FASTCALL,
     "collect(items, of_params, candidates) -> (grads, key) or (None, None)"},
    {"power_sum", fastcall<fastclip_power_sum>(), METH_FASTCALL,
     "power_sum(tensors, p, max_numel=-1) -> float or None: sum of |x|^p over dense CPU tensors (p = inf: max |x|)"},
    {"scale_", fastcall<fastclip_scale_>(), METH_FASTCALL,
     "scale_(tensors, coef, max_numel=-1) -> bool: x *= coef in place, bitwise as torch's mul_ by a tensor"},
    {"openmp", fastcall<fastclip_openmp>(), METH_FASTCALL,
     "openmp() -> bool: whether large power_sum / scale_ calls run in torch's OpenMP team"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

#define FASTCLIP_CONCAT2(a, b) a##b
#define FASTCLIP_CONCAT(a, b) FASTCLIP_CONCAT2(a, b)

PyMODINIT_FUNC FASTCLIP_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastclip_native", nullptr, -1, methods};
  return PyModule_Create(&module);
}
