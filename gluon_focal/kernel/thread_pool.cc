#include "thread_pool.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif
#include <mutex>
#include <thread>

namespace gluon_focal {
namespace {

std::atomic<int> g_num_threads_override{0};

bool env_int(const char* name, int* value) {
  const char* v = std::getenv(name);
  if (!v || !*v) return false;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (end == v) return false;
  *value = static_cast<int>(x);
  return true;
}

int available_cores() {
  cpu_set_t cs;
  if (sched_getaffinity(0, sizeof(cs), &cs) == 0) return std::max(1, CPU_COUNT(&cs));
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();   // never destroyed: helpers outlive main()
    return *pool;
  }

  void run(Job* job, int threads) {
    if (threads <= 1 || job->count <= 1 || getpid() != pid_ || busy_.exchange(true)) {
      job->body(job->context, job);
      return;
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      int wanted = std::min<int>(threads - 1, kMaxHelpers);
      while (helpers_started_ < wanted) {
        std::thread(&Pool::helper, this).detach();
        ++helpers_started_;
      }
      job->max_helpers = wanted;
      job_ = job;
      joined_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    job->body(job->context, job);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      job_ = nullptr;                      // late helpers find nothing
      done_.wait(lock, [this] { return working_ == 0; });
    }
    busy_.store(false);
  }

 private:
  static const int kMaxHelpers = 255;
  Pool() : pid_(getpid()) {}

  void helper() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      Job* job = job_;
      if (!job || joined_ >= job->max_helpers) continue;
      ++joined_;
      ++working_;
      lock.unlock();
      job->body(job->context, job);
      lock.lock();
      if (--working_ == 0) done_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int joined_ = 0, working_ = 0, helpers_started_ = 0;
  std::atomic<bool> busy_{false};
  const pid_t pid_;
};

}  // namespace

int default_num_threads() {
  int v;
  if (env_int("GLUON_FOCAL_NUM_THREADS", &v) && v > 0) return v;
  if (env_int("OMP_NUM_THREADS", &v) && v > 0) return v;
  int cores = available_cores();
  if (env_int("MXNET_OMP_MAX_THREADS", &v)) return v > 0 ? std::min(cores, v) : cores;
#if defined(__x86_64__) || defined(__i386__)
  return std::max(1, cores >> 1);
#else
  return cores;
#endif
}

int num_threads() {
  int n = g_num_threads_override.load();
  return n > 0 ? n : default_num_threads();
}

void set_num_threads(int n) { g_num_threads_override.store(n > 0 ? n : 0); }

int threads_for(int64_t elements, int64_t pieces, int64_t serial_below) {
  if (elements < serial_below) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), pieces)));
}

void run_job(Job* job, int threads) { Pool::get().run(job, threads); }

namespace {

// memset with streaming stores on x86-64 (a zero gradient nobody reads soon:
// no line is fetched before it is overwritten); plain memset elsewhere.
void zero_bytes(char* p, size_t n) {
#if defined(__x86_64__)
  const size_t head = std::min(n, static_cast<size_t>((16 - reinterpret_cast<uintptr_t>(p) % 16) % 16));
  std::memset(p, 0, head);
  size_t i = head;
  const __m128i zero = _mm_setzero_si128();
  for (; i + 16 <= n; i += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(p + i), zero);
  std::memset(p + i, 0, n - i);
  _mm_sfence();   // before another thread reads them
#else
  std::memset(p, 0, n);
#endif
}

}  // namespace

void zero_fill(void* data, size_t bytes) {
  const size_t slice = size_t(1) << 20;
  const int64_t slices = static_cast<int64_t>((bytes + slice - 1) / slice);
  char* base = static_cast<char*>(data);
  parallel_for_chunks(slices, num_threads(), [] { return 0; }, [&](int, int64_t id) {
    const size_t start = static_cast<size_t>(id) * slice;
    zero_bytes(base + start, std::min(slice, bytes - start));
  });
}

}  // namespace gluon_focal
