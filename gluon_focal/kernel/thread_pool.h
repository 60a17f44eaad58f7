/*
 * Threads of the operator: how many (MXNet's own rule, or the user's), and a
 * small pool that runs the chunks of one call.
 *
 * A job is a range of chunk ids claimed one at a time from an atomic counter
 * by the calling thread and by helper threads that happen to be awake.  The
 * caller never waits for a helper that has not started: once every id is
 * claimed it only waits for the (at most one per helper) chunk still being
 * processed.  On a loaded machine a helper that is not scheduled in time
 * therefore costs nothing (the caller does all chunks, like one thread),
 * whereas an OpenMP team waits at its barriers for every thread (4-8 ms per
 * parallel region were measured here).  Helpers sleep on a condition variable.
 * One job at a time: a concurrent caller (another MXNet engine thread) or a
 * forked child (its pool threads do not exist) runs its job alone.
 */
#ifndef GLUON_FOCAL_THREAD_POOL_H_
#define GLUON_FOCAL_THREAD_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gluon_focal {

// MXNet 1.9's mxnet::engine::OpenMP::GetRecommendedOMPThreadCount, with
// GLUON_FOCAL_NUM_THREADS first: OMP_NUM_THREADS if set; else
// min(cores, MXNET_OMP_MAX_THREADS) if set; else cores / 2 on x86.
int default_num_threads();
int num_threads();          // the override, else the default
void set_num_threads(int n);  // n <= 0: back to the default

struct Job {
  std::atomic<int64_t> next{0};
  int64_t count = 0;
  void (*body)(void* context, Job* job) = nullptr;   // loops on claim()
  void* context = nullptr;
  int max_helpers = 0;
  int64_t claim() { return next.fetch_add(1, std::memory_order_relaxed); }
};

// Threads for a call of `elements` elements split into `pieces`: one below
// `serial_below` elements (waking a helper costs more than it saves), else
// num_threads(), but no more than there are pieces.
int threads_for(int64_t elements, int64_t pieces, int64_t serial_below);

// Runs job->body on the calling thread and on up to threads - 1 helpers.
void run_job(Job* job, int threads);

// Calls work(state, id) for every id in [0, count) on up to `threads`
// threads; each thread that takes part first makes its own state.
template <class MakeState, class Work>
void parallel_for_chunks(int64_t count, int threads, MakeState make_state, Work work) {
  struct Context { MakeState* make_state; Work* work; };
  Context context{&make_state, &work};
  Job job;
  job.count = count;
  job.context = &context;
  job.body = [](void* c, Job* j) {
    Context* ctx = static_cast<Context*>(c);
    int64_t id = j->claim();
    if (id >= j->count) return;
    auto state = (*ctx->make_state)();
    for (; id < j->count; id = j->claim()) (*ctx->work)(state, id);
  };
  run_job(&job, threads);
}

// Sets `bytes` bytes at `data` to zero on up to num_threads() threads, with
// streaming stores (for the label's gradient, which nothing reads soon).
void zero_fill(void* data, size_t bytes);

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_THREAD_POOL_H_
