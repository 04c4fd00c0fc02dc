// fastclip's optional native helper: the gradients of a parameter list and their key, in one pass.
//
// collect(items, of_params, candidates) -> (grads, key) or (None, None)
//
//   items       a list of tensors: parameters (of_params=True: their non-None .grad is taken)
//               or the gradients themselves (of_params=False)
//   candidates  a sequence of keys returned earlier
//   grads       the gradients (a new list; ``items`` itself when of_params=False)
//   key         bytes: for each gradient, in order, its address, element count, dtype, device,
//               contiguity and dense-span flags (24 bytes). If it equals one of ``candidates``,
//               that very object is returned, so the caller compares with ``is``.
//
// (None, None) means "take the Python path": an item that is not exactly a torch.Tensor or
// Parameter, a gradient that is a tensor subclass (DTensor, ...) or not a dense strided tensor
// with storage, a non-leaf parameter (Python warns about its .grad), or any C++ error. The Python
// path then validates and reports the problem as usual.
//
// Why: reading four attributes of each tensor from Python costs ~0.5 us per tensor on a slow
// CPU; the same fields read in C++ cost a few nanoseconds.
#include <Python.h>

#include <cstring>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>

namespace {

struct Record {  // 24 bytes, no padding left uninitialised: keys are compared with memcmp
  int64_t address;
  int64_t numel;
  int8_t dtype;
  int8_t device_type;
  int16_t device_index;
  int8_t contiguous;
  int8_t dense;  // non-overlapping and dense: one flat span of memory
  int16_t reserved;
};
static_assert(sizeof(Record) == 24, "Record must be packed");

// Appends the record of ``g``; false if ``g`` must go through the Python path.
bool append_record(const at::Tensor& g, std::vector<Record>& out) {
  if (g.layout() != at::kStrided || !g.has_storage() || g.is_nested() ||
      g.key_set().has(c10::DispatchKey::Python)) {
    return false;
  }
  Record r;
  std::memset(&r, 0, sizeof(r));
  r.address = reinterpret_cast<int64_t>(g.data_ptr());
  r.numel = g.numel();
  r.dtype = static_cast<int8_t>(g.scalar_type());
  r.device_type = static_cast<int8_t>(g.device().type());
  r.device_index = static_cast<int16_t>(g.device().index());
  r.contiguous = g.is_contiguous() ? 1 : 0;
  r.dense = g.is_non_overlapping_and_dense() ? 1 : 0;
  out.push_back(r);
  return true;
}

// Appends the .grad of parameter ``t`` (if any) to ``grads`` and its record; false for the Python path.
bool append_grad(const at::Tensor& t, PyObject* grads, std::vector<Record>& records) {
  // TensorImpl::grad(): Tensor::grad() would warn for a non-leaf without a gradient
  const at::Tensor& g = t.unsafeGetTensorImpl()->grad();
  if (!g.defined()) {
    return t.is_leaf() || t.retains_grad();  // else Python's .grad warns: let it
  }
  if (!append_record(g, records)) {
    return false;
  }
  PyObject* obj = THPVariable_Wrap(g);
  const bool ok = obj != nullptr && THPVariable_CheckExact(obj) && PyList_Append(grads, obj) == 0;
  Py_XDECREF(obj);
  return ok;
}

PyObject* python_path() {
  return Py_BuildValue("(OO)", Py_None, Py_None);
}

}  // namespace

PyObject* fastclip_collect(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyList_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "collect(items: list, of_params: bool, candidates: tuple)");
    return nullptr;
  }
  PyObject* items = args[0];
  const int of_params = PyObject_IsTrue(args[1]);
  if (of_params < 0) {
    return nullptr;
  }
  PyObject* candidates = PySequence_Fast(args[2], "candidates must be a sequence");
  if (candidates == nullptr) {
    return nullptr;
  }
  static thread_local std::vector<Record> records;
  records.clear();
  PyObject* grads = of_params ? PyList_New(0) : (Py_INCREF(items), items);
  bool ok = grads != nullptr;
  try {
    // the size is read every time: wrapping a gradient may allocate, run the garbage collector
    // and so Python code; grads and key stay consistent with each other whatever happens
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(items); ++i) {
      PyObject* item = PyList_GET_ITEM(items, i);
      if (!THPVariable_CheckExact(item)) {
        ok = false;
        break;
      }
      const at::Tensor& t = THPVariable_Unpack(item);
      if (!of_params) {
        ok = append_record(t, records);
        continue;
      }
      Py_INCREF(item);  // keeps the parameter (and its gradient) alive while it is read
      ok = append_grad(t, grads, records);
      Py_DECREF(item);
    }
  } catch (...) {
    ok = false;
  }
  if (!ok) {
    Py_DECREF(candidates);
    Py_XDECREF(grads);
    PyErr_Clear();
    return python_path();
  }
  const char* data = reinterpret_cast<const char*>(records.data());
  const Py_ssize_t size = static_cast<Py_ssize_t>(records.size() * sizeof(Record));
  PyObject* key = nullptr;
  const Py_ssize_t n_candidates = PySequence_Fast_GET_SIZE(candidates);
  for (Py_ssize_t c = 0; c < n_candidates && key == nullptr; ++c) {
    PyObject* candidate = PySequence_Fast_GET_ITEM(candidates, c);
    if (PyBytes_Check(candidate) && PyBytes_GET_SIZE(candidate) == size &&
        std::memcmp(PyBytes_AS_STRING(candidate), data, size) == 0) {
      Py_INCREF(candidate);
      key = candidate;
    }
  }
  Py_DECREF(candidates);
  if (key == nullptr) {
    key = PyBytes_FromStringAndSize(size ? data : "", size);
    if (key == nullptr) {
      Py_DECREF(grads);
      return nullptr;
    }
  }
  PyObject* result = PyTuple_Pack(2, grads, key);
  Py_DECREF(grads);
  Py_DECREF(key);
  return result;
}
