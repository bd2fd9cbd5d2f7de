// Tensor helpers shared by the operators' Paddle-facing code.
#pragma once

#include "paddle/extension.h"

namespace pmq_ops {

// t itself when packed row-major, else a packed copy: the kernels index raw data.
inline paddle::Tensor contiguous(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

}  // namespace pmq_ops
