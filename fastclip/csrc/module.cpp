// The Python module of fastclip's optional native helper (built by fastclip/native.py): the
// functions of grad_key.cpp (reading gradients and their key), cpu_math.cpp (CPU power sums
// and scaling) and team_choice.cpp (how large calls of those run), each documented in its file.
#include <Python.h>

PyObject* fastclip_collect(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_power_sum(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_scale_(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_openmp(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_team_choice(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_team_stats(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* fastclip_replay_team_choice(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

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
    {"team_choice", fastcall<fastclip_team_choice>(), METH_FASTCALL,
     "team_choice(mode=None) -> str: 'auto' (measure which is faster), 'team' or 'caller' for large calls; sets it if given"},
    {"team_stats", fastcall<fastclip_team_stats>(), METH_FASTCALL,
     "team_stats() -> dict: per kind of call, the measured ns per element of each mode, calls and probe_every"},
    {"replay_team_choice", fastcall<fastclip_replay_team_choice>(), METH_FASTCALL,
     "replay_team_choice(times) -> str: the policy's choices ('c'/'t') for calls of given (caller, team) seconds"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

#define FASTCLIP_CONCAT2(a, b) a##b
#define FASTCLIP_CONCAT(a, b) FASTCLIP_CONCAT2(a, b)

PyMODINIT_FUNC FASTCLIP_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastclip_native", nullptr, -1, methods};
  return PyModule_Create(&module);
}
