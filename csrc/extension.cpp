// The Python module perfloss._C. It holds no Python functions: importing it runs the static
// TORCH_LIBRARY_IMPL(perfloss, CPU, m) registrations of every csrc/ file, which attach the C++
// kernels to the ops perfloss/ops defines (see perfloss/ops/library.py).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
