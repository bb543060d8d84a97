// Attention of one new query per (row, head) over that row's slot cache, the (row, head) pairs split across
// the cores: an XLA:CPU custom call for the fast decode path. See tfchat/model/native_attention.py.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>
#include <sched.h>
#include <unistd.h>

#include "xla/service/custom_call_status.h"
#include "xla/service/custom_call_target_registry.h"

namespace {

struct Job {
  const float *q, *k, *v;
  const int32_t* last;
  float* y;
  int H, S, D;
  float scale;
  int pairs, parts;
};

// Softmax(q . k_j * scale) . v over keys j = 0 .. last, exactly as the masked XLA attention computes it
// (masked keys have weight exp(-1e9 - max) = 0 there), reading only the filled prefix.
// Keys a row attends to: 0 .. its position, clamped to the slot (XLA's step clamps it too).
int keys(const Job& job, int row) { return std::max(0, std::min(job.last[row], job.S - 1)) + 1; }

void attend(const Job& job, int pair, float* scores) {
  const int D = job.D, n = keys(job, pair / job.H);
  const float* q = job.q + size_t(pair) * D;
  const float* k = job.k + size_t(pair) * job.S * D;
  const float* v = job.v + size_t(pair) * job.S * D;
  float* y = job.y + size_t(pair) * D;
  float top = -INFINITY;
  for (int j = 0; j < n; ++j) {
    const float* kj = k + size_t(j) * D;
    float acc[16] = {0};
    int d = 0;
    for (; d + 16 <= D; d += 16)
      for (int i = 0; i < 16; ++i) acc[i] += q[d + i] * kj[d + i];
    float s = 0;
    for (; d < D; ++d) s += q[d] * kj[d];
    for (int i = 0; i < 16; ++i) s += acc[i];
    s *= job.scale;
    scores[j] = s;
    top = std::max(top, s);
  }
  float sum = 0;
  for (int j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - top);
    sum += scores[j];
  }
  for (int d = 0; d < D; ++d) y[d] = 0;
  for (int j = 0; j < n; ++j) {
    const float w = scores[j] / sum;
    const float* vj = v + size_t(j) * D;
    for (int d = 0; d < D; ++d) y[d] += w * vj[d];
  }
}

// Pairs are taken one at a time from a shared counter: the calling thread starts at once and a worker
// joins when it wakes (waking one takes tens of microseconds on a VM), so a late worker never holds up the call.
void run_pairs(const Job& job, std::atomic<int>& next) {
  std::vector<float> scores(job.S);
  for (int p = next.fetch_add(1); p < job.pairs; p = next.fetch_add(1)) attend(job, p, scores.data());
}

int cores() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

// Workers sleep on a futex (std::atomic::wait) between calls, so they take no core from the dots around.
class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { Loop(i + 1); });
  }
  int size() const { return int(threads_.size()) + 1; }
  void Run(const Job& job) {
    job_ = &job;
    next_.store(0);
    pending_.store(job.parts - 1);
    generation_.fetch_add(1);
    generation_.notify_all();
    run_pairs(job, next_);
    for (int left = pending_.load(); left != 0; left = pending_.load()) pending_.wait(left);
  }

 private:
  void Loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      generation_.wait(seen);
      seen = generation_.load();
      const Job& job = *job_;
      if (index < job.parts) {
        run_pairs(job, next_);
        if (pending_.fetch_sub(1) == 1) pending_.notify_one();
      }
    }
  }
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> next_{0};
  const Job* job_ = nullptr;
};

std::mutex pool_mutex;
Pool* pool = nullptr;
pid_t pool_pid = 0;
// Below this many cached floats per call, waking a worker costs more than it saves.
constexpr long kThreadedFloats = 64 * 1024;

}  // namespace

// in: q [B, H, D], k [B, H, S, D], v [B, H, S, D] (float32), last [B] (int32), dims [4] = (B, H, S, D) (int32).
// out: y [B, H, D] float32.
extern "C" void tfchat_slot_attention(void* out, const void** in, const char* opaque, size_t opaque_len,
                                      XlaCustomCallStatus* status) {
  const int32_t* dims = static_cast<const int32_t*>(in[4]);
  Job job{static_cast<const float*>(in[0]), static_cast<const float*>(in[1]), static_cast<const float*>(in[2]),
          static_cast<const int32_t*>(in[3]), static_cast<float*>(out), dims[1], dims[2], dims[3],
          float(1.0 / std::sqrt(double(dims[3]))), dims[0] * dims[1], 1};
  long work = 0;  // floats read
  for (int b = 0; b < dims[0]; ++b) work += long(keys(job, b)) * job.H * job.D * 2;
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (lock.owns_lock() && work >= kThreadedFloats) {
    if (pool == nullptr || pool_pid != getpid()) {  // after a fork the workers are gone
      pool = new Pool(std::min(cores(), 16) - 1);
      pool_pid = getpid();
    }
    job.parts = std::max(1, std::min(pool->size(), job.pairs));
  }
  if (job.parts > 1) {
    pool->Run(job);
  } else {
    std::atomic<int> next{0};
    run_pairs(job, next);
  }
  // The status starts as success (its setters are not exported by the TF wheel).
}

XLA_CPU_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM("tfchat_slot_attention", tfchat_slot_attention);
