/*
 * gluon-focal: fused sigmoid focal loss operator for Apache MXNet (lib_api,
 * MX_LIBRARY_VERSION 11).  Registers `gluon_focal_loss(pred, label)`.
 *
 * Attributes (strings): mode dense|sparse, axis, batch_axis, gamma,
 * alpha none|a|a0,a1,..., from_sigmoid 0|1, eps, ignore_label none|v,
 * background_label none|v (sparse), normalization none|sum|mean|valid|positive,
 * scale.  See gluon_focal/kernel/__init__.py for the full contract.
 *
 * Forward: one pass over pred (plus an O(labels) pass for sparse validation /
 * normalisation counts).  Backward: one pass writing d pred once; the label
 * gradient is zero.  No pred-sized temporaries: fp16 is converted per chunk
 * in a small per-thread scratch buffer.
 *
 * Build: g++ -std=c++14 -O3 -fPIC -shared -pthread -fopenmp -I<mxnet>/include
 *        focal_loss_op.cc <mxnet>/src/lib_api.cc -o libgluon_focal_op.so
 * The AVX2/FMA/F16C kernels are compiled via target pragmas and chosen at
 * runtime with __builtin_cpu_supports, so the .so runs on any x86-64 CPU.
 */
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>
#include <unistd.h>
#include <sched.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mxnet/lib_api.h"
#include "focal_math.h"

#if defined(__x86_64__) || defined(__i386__)
#define GF_X86 1
#include <immintrin.h>
#else
#define GF_X86 0
#endif

using namespace mxnet::ext;

namespace gluon_focal {

enum Norm { kNormNone = 0, kNormSum, kNormMean, kNormValid, kNormPositive };

struct Consts {
  float gamma, eps, one_m_eps, ign, bg, scale;
  double gamma_d, eps_d, one_m_eps_d, ign_d, bg_d, scale_d;
};

struct Pattern {
  const int32_t* cls = nullptr;
  const int32_t* loff = nullptr;
  const float* a0f = nullptr;
  const float* a1f = nullptr;
  const double* a0d = nullptr;
  const double* a1d = nullptr;
  int64_t R = 0, inner = 0, C = 0;
  bool per_class = false;
  bool two_row_fast = false;
};

struct Params {
  bool sparse = false;
  int axis = -1, batch_axis = 0;
  double gamma = 2.0;
  int alpha_kind = 1;           // 0 none, 1 scalar, 2 per class
  std::vector<double> alpha{0.25};
  bool from_sig = false;
  double eps = 1e-12;
  bool has_ignore = false, has_bg = false;
  double ignore = 0.0, bg = 0.0;
  int norm = kNormMean;
  double scale = 1.0;
};

struct Plan : Params {
  int gm = kGammaAny;
  Consts consts;
  double a0_scalar = 1.0, a1_scalar = 1.0;
  // geometry: pred viewed as [P, B, Q]; Q = nsr_seg super-rows of R = C*inner
  int64_t N = 0, C = 1, inner = 1, R = 1, B = 1, P = 1, Q = 1, nsr_seg = 1;
  bool layoutP = true;
  int64_t G = 1, piece = 1, ppr = 1, cps = 1, nchunks = 0, max_chunk_len = 0;
  std::vector<int32_t> cls_pat, loff_pat;
  std::vector<float> a0_pat_f, a1_pat_f;
  std::vector<double> a0_pat_d, a1_pat_d;
  Pattern pattern;
  std::vector<int64_t> label_shape;
};

struct ChunkDesc {
  int64_t start, len, lab_start, sample, cls, nsr;
};

static const int64_t kChunk = 8192;      // elements per chunk (L1/L2 sized)
static const int64_t kInnerMin = 64;     // inner >= this: row layout, else pattern
static const int64_t kSerialBelow = 32768;

static inline ChunkDesc chunk_desc(const Plan& p, int64_t id) {
  ChunkDesc d;
  int64_t s = id / p.cps, k = id % p.cps;
  d.sample = s % p.B;
  if (p.layoutP) {
    int64_t sr0 = k * p.G;
    d.nsr = std::min(p.G, p.nsr_seg - sr0);
    d.start = s * p.Q + sr0 * p.R;
    d.len = d.nsr * p.R;
    d.lab_start = (s * p.nsr_seg + sr0) * p.inner;
    d.cls = -1;
  } else {
    int64_t rr = k / p.ppr, pc = k % p.ppr;
    int64_t srl = rr / p.C;
    d.cls = rr % p.C;
    int64_t j0 = pc * p.piece;
    d.len = std::min(p.piece, p.inner - j0);
    d.start = s * p.Q + rr * p.inner + j0;
    d.lab_start = (s * p.nsr_seg + srl) * p.inner + j0;
    d.nsr = 0;
  }
  return d;
}

/* ------------------------------------------------------------------ */
/* threads                                                             */
/* ------------------------------------------------------------------ */
static std::atomic<int> g_threads{0};       // 0: default
static std::atomic<int> g_force_scalar{0};

static int env_int(const char* name, bool* set) {
  const char* v = std::getenv(name);
  *set = false;
  if (!v || !*v) return 0;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (end == v) return 0;
  *set = true;
  return static_cast<int>(x);
}

static int num_procs() {
#ifdef _OPENMP
  return std::max(1, omp_get_num_procs());
#else
  cpu_set_t cs;
  if (sched_getaffinity(0, sizeof(cs), &cs) == 0) return std::max(1, CPU_COUNT(&cs));
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
#endif
}

// Mirrors mxnet::engine::OpenMP::GetRecommendedOMPThreadCount (MXNet 1.9):
// OMP_NUM_THREADS set -> that; else min(procs, MXNET_OMP_MAX_THREADS) if set;
// else procs / 2 on x86 (procs elsewhere).  GLUON_FOCAL_NUM_THREADS overrides.
static int default_threads() {
  bool set;
  int v = env_int("GLUON_FOCAL_NUM_THREADS", &set);
  if (set && v > 0) return v;
  int procs = num_procs();
  v = env_int("OMP_NUM_THREADS", &set);
  if (set && v > 0) return v;
  v = env_int("MXNET_OMP_MAX_THREADS", &set);
  if (set) return v > 0 ? std::min(procs, v) : procs;
#if GF_X86
  return std::max(1, procs >> 1);
#else
  return procs;
#endif
}

static int current_threads() {
  int t = g_threads.load();
  return t > 0 ? t : default_threads();
}

/* ------------------------------------------------------------------ */
/* work pool                                                           */
/* ------------------------------------------------------------------ */
// A job is a range of chunk ids claimed one at a time from an atomic counter
// by the calling thread and by helper threads that happen to be awake.  The
// caller never waits for a helper that has not started: once every id is
// claimed it only waits for the (at most one per helper) chunk still being
// processed.  On a loaded machine a helper that is not scheduled in time
// therefore costs nothing (the caller does all chunks, like one thread),
// whereas an OpenMP team waits at its barriers for every thread, i.e. for a
// scheduler tick (4-8 ms per parallel region were measured here).  Helpers
// sleep on a condition variable (no spinning).  One job at a time: a second
// concurrent caller (another MXNet engine thread) runs its job alone, and so
// does a forked child (its pool threads do not exist).
struct Job {
  std::atomic<int64_t> next{0};
  int64_t n = 0;
  void (*body)(void* ctx, Job* job) = nullptr;   // loops on claim()
  void* ctx = nullptr;
  int max_helpers = 0;
  int64_t claim() { return next.fetch_add(1, std::memory_order_relaxed); }
};

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();   // never destroyed: helpers outlive main()
    return *pool;
  }

  void run(Job* job, int nt) {
    if (nt <= 1 || job->n <= 1 || getpid() != pid_ || busy_.exchange(true)) {
      job->body(job->ctx, job);
      return;
    }
    {
      std::unique_lock<std::mutex> lk(mu_);
      int want = std::min<int>(nt - 1, kMaxHelpers);
      while (static_cast<int>(threads_) < want) {
        std::thread(&Pool::helper, this).detach();
        ++threads_;
      }
      job->max_helpers = want;
      job_ = job;
      joined_ = 0;
      ++gen_;
    }
    cv_.notify_all();
    job->body(job->ctx, job);
    {
      std::unique_lock<std::mutex> lk(mu_);
      job_ = nullptr;                      // late helpers find nothing
      done_.wait(lk, [this] { return users_ == 0; });
    }
    busy_.store(false);
  }

 private:
  static const int kMaxHelpers = 255;
  Pool() : pid_(getpid()) {}

  void helper() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      Job* j = job_;
      if (!j || joined_ >= j->max_helpers) continue;
      ++joined_;
      ++users_;
      lk.unlock();
      j->body(j->ctx, j);
      lk.lock();
      if (--users_ == 0) done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_;
  Job* job_ = nullptr;
  uint64_t gen_ = 0;
  int joined_ = 0, users_ = 0;
  unsigned threads_ = 0;
  std::atomic<bool> busy_{false};
  const pid_t pid_;
};

// Run f(id) for id in [0, n) on up to nt threads; each participating thread
// first builds its own state with make() (per-thread scratch).
template <class Make, class F>
static void parallel_chunks(int64_t n, int nt, Make make, F f) {
  struct Ctx { Make* make; F* f; };
  Ctx ctx{&make, &f};
  Job job;
  job.n = n;
  job.ctx = &ctx;
  job.body = [](void* c, Job* j) {
    Ctx* cx = static_cast<Ctx*>(c);
    int64_t id = j->claim();
    if (id >= j->n) return;
    auto state = (*cx->make)();
    for (; id < j->n; id = j->claim()) (*cx->f)(state, id);
  };
  Pool::get().run(&job, nt);
}

/* ------------------------------------------------------------------ */
/* ISA-specific kernels                                                */
/* ------------------------------------------------------------------ */
namespace isa_scalar {
#include "focal_elem.inc"
#define GF_HAVE_F16C 0
#include "focal_cpu.inc"
template <class CT> struct PickVT { typedef ScalarVT<CT> VT; };
#include "focal_driver.inc"
#undef GF_HAVE_F16C
}  // namespace isa_scalar

#if GF_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace isa_avx2 {
}  // namespace isa_avx2
}  // namespace gluon_focal
#include "simd_avx2.h"
namespace gluon_focal {
namespace isa_avx2 {
using namespace gluon_focal::avx2;
#include "focal_elem.inc"
#define GF_HAVE_F16C 1
#include "focal_cpu.inc"

struct AvxVT {
  typedef VF8 V;
  typedef MF8 M;
  static const int W = 8;
  struct Acc { __m256d lo, hi; };
  static inline V load(const float* p) { return mk(_mm256_loadu_ps(p)); }
  static inline void store(float* p, V v) { _mm256_storeu_ps(p, v.v); }
  static inline V splat(double f) { return mk(_mm256_set1_ps(static_cast<float>(f))); }
  static inline M ne(V a, V b) { return mask_ne(a, b); }
  static inline M eq(V a, V b) { return mask_eq(a, b); }
  static inline M and_(M a, M b) { return mask_and(a, b); }
  static inline V sel(M m, V a, V b) { return vselect(m, a, b); }
  static inline V one_if(M m) { return mk(_mm256_and_ps(m.m, _mm256_set1_ps(1.0f))); }
  static inline void acc_zero(Acc* a) { a->lo = _mm256_setzero_pd(); a->hi = _mm256_setzero_pd(); }
  static inline void acc_add(Acc* a, V v) {
    a->lo = _mm256_add_pd(a->lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v.v)));
    a->hi = _mm256_add_pd(a->hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v.v, 1)));
  }
  static inline double acc_total(const Acc& a) {
    alignas(32) double t[4];
    _mm256_store_pd(t, _mm256_add_pd(a.lo, a.hi));
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
  static inline void sparse_P(const int32_t* codes_row, const int32_t* loff, const int32_t* cls,
                              bool two_row_fast, M* valid, V* t) {
    __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(loff));
    __m256i cv;
    if (two_row_fast) {
      __m256i a = _mm256_set1_epi32(codes_row[0]);
      __m256i b = _mm256_set1_epi32(codes_row[1]);
      cv = _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi32(lo, _mm256_setzero_si256()));
    } else {
      cv = _mm256_i32gather_epi32(reinterpret_cast<const int*>(codes_row), lo, 4);
    }
    __m256i cl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cls));
    __m256i ign = _mm256_cmpeq_epi32(cv, _mm256_set1_epi32(-2));
    valid->m = _mm256_castsi256_ps(_mm256_xor_si256(ign, _mm256_set1_epi32(-1)));
    t->v = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(cv, cl)), _mm256_set1_ps(1.0f));
  }
};
template <class CT> struct PickVT { typedef ScalarVT<CT> VT; };
template <> struct PickVT<float> { typedef AvxVT VT; };
#include "focal_fast_avx2.inc"
#include "focal_driver.inc"
#undef GF_HAVE_FAST
#undef GF_HAVE_F16C
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

static bool cpu_has_avx2() {
#if GF_X86
  static int ok = -1;
  if (ok < 0) {
    __builtin_cpu_init();
    ok = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("f16c")) ? 1 : 0;
  }
  return ok == 1;
#else
  return false;
#endif
}

static bool use_avx2() { return cpu_has_avx2() && g_force_scalar.load() == 0; }

/* ------------------------------------------------------------------ */
/* attribute parsing                                                   */
/* ------------------------------------------------------------------ */
static std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n[]()"), b = s.find_last_not_of(" \t\n[]()");
  if (a == std::string::npos) return "";
  return s.substr(a, b - a + 1);
}

static bool parse_double(const std::string& s0, double* out) {
  std::string s = trim(s0);
  if (s.empty()) return false;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') return false;
  *out = v;
  return true;
}

static bool parse_int(const std::string& s0, int* out) {
  double v;
  if (!parse_double(s0, &v) || v != std::floor(v) || std::fabs(v) > 1e9) return false;
  *out = static_cast<int>(v);
  return true;
}

static bool is_none(const std::string& s0) {
  std::string s = trim(s0);
  return s.empty() || s == "none" || s == "None" || s == "null";
}

static bool parse_bool(const std::string& s0, bool* out) {
  std::string s = trim(s0);
  if (s == "1" || s == "true" || s == "True") { *out = true; return true; }
  if (s == "0" || s == "false" || s == "False") { *out = false; return true; }
  return false;
}

// lib_api keeps every error message of the process in a private list and MXNet
// reports the whole list with each new failure; lib_api offers no way to clear it.
// An explicit instantiation may name a private member, which gives us the list.
template <typename Tag, typename Tag::type Member>
struct PrivateAccess {
  friend typename Tag::type member_of(Tag) { return Member; }
};
struct ErrorListTag {
  typedef std::vector<std::stringstream*> mxnet::ext::MXerrorMsgs::*type;
  friend type member_of(ErrorListTag);
};
template struct PrivateAccess<ErrorListTag, &mxnet::ext::MXerrorMsgs::messages>;

// Report one error, dropping those of earlier calls (MXNet has read them by now).
static void report_error(const std::string& message) {
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  std::vector<std::stringstream*>& old = mxnet::ext::MXerrorMsgs::get()->*member_of(ErrorListTag());
  for (std::stringstream* m : old) delete m;
  old.clear();
  MX_ERROR_MSG << message;
}

#define GF_FAIL(msg)                                              \
  do {                                                            \
    std::ostringstream _gf_os;                                    \
    _gf_os << "gluon_focal_loss: " << msg;                        \
    report_error(_gf_os.str());                                   \
    return MX_FAIL;                                               \
  } while (0)

static MXReturnValue parse_params(const std::unordered_map<std::string, std::string>& attrs,
                                  Params* p) {
  for (const auto& kv : attrs) {
    const std::string& k = kv.first;
    const std::string& v = kv.second;
    if (k.size() >= 2 && k[0] == '_' && k[1] == '_') continue;   // MXNet-internal attrs
    if (k == "mode") {
      std::string m = trim(v);
      if (m == "dense") p->sparse = false;
      else if (m == "sparse") p->sparse = true;
      else GF_FAIL("attribute mode='" << v << "' must be 'dense' or 'sparse'");
    } else if (k == "axis") {
      if (!parse_int(v, &p->axis)) GF_FAIL("attribute axis='" << v << "' is not an integer");
    } else if (k == "batch_axis") {
      if (!parse_int(v, &p->batch_axis)) GF_FAIL("attribute batch_axis='" << v << "' is not an integer");
    } else if (k == "gamma") {
      if (!parse_double(v, &p->gamma) || !(p->gamma >= 0.0) || std::isinf(p->gamma))
        GF_FAIL("attribute gamma='" << v << "' must be a finite number >= 0");
    } else if (k == "alpha") {
      p->alpha.clear();
      if (is_none(v)) {
        p->alpha_kind = 0;
      } else {
        std::string s = trim(v);
        std::stringstream ss(s);
        std::string item;
        while (std::getline(ss, item, ',')) {
          if (trim(item).empty()) continue;
          double a;
          if (!parse_double(item, &a) || !std::isfinite(a))
            GF_FAIL("attribute alpha='" << v << "': '" << item << "' is not a number");
          p->alpha.push_back(a);
        }
        if (p->alpha.empty()) GF_FAIL("attribute alpha='" << v << "' is empty");
        p->alpha_kind = (p->alpha.size() == 1 && s.find(',') == std::string::npos) ? 1 : 2;
      }
    } else if (k == "from_sigmoid") {
      if (!parse_bool(v, &p->from_sig)) GF_FAIL("attribute from_sigmoid='" << v << "' must be 0 or 1");
    } else if (k == "eps") {
      if (!parse_double(v, &p->eps) || !(p->eps >= 0.0 && p->eps < 0.5))
        GF_FAIL("attribute eps='" << v << "' must be a number in [0, 0.5)");
    } else if (k == "ignore_label") {
      if (is_none(v)) p->has_ignore = false;
      else if (parse_double(v, &p->ignore)) p->has_ignore = true;
      else GF_FAIL("attribute ignore_label='" << v << "' must be 'none' or a number");
    } else if (k == "background_label") {
      if (is_none(v)) p->has_bg = false;
      else if (parse_double(v, &p->bg)) p->has_bg = true;
      else GF_FAIL("attribute background_label='" << v << "' must be 'none' or a number");
    } else if (k == "normalization") {
      std::string n = trim(v);
      if (n == "none") p->norm = kNormNone;
      else if (n == "sum") p->norm = kNormSum;
      else if (n == "mean") p->norm = kNormMean;
      else if (n == "valid") p->norm = kNormValid;
      else if (n == "positive") p->norm = kNormPositive;
      else GF_FAIL("attribute normalization='" << v
                   << "' must be one of none, sum, mean, valid, positive");
    } else if (k == "scale") {
      if (!parse_double(v, &p->scale) || !std::isfinite(p->scale))
        GF_FAIL("attribute scale='" << v << "' must be a finite number");
    } else {
      GF_FAIL("unknown attribute '" << k << "' (known: mode, axis, batch_axis, gamma, alpha, "
              "from_sigmoid, eps, ignore_label, background_label, normalization, scale)");
    }
  }
  if (p->has_bg && !p->sparse) GF_FAIL("background_label is only valid with mode='sparse'");
  return MX_SUCCESS;
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// Geometry checks shared by infer_shape and compute.  `canon_axis` is the
// class axis in [0, ndim] (ndim: virtual size-1 class axis for dense losses
// whose class axis is irrelevant and coincides with the batch axis).
static MXReturnValue check_geometry(const Params& p, const std::vector<int64_t>& ps,
                                    const std::vector<int64_t>& ls, int* canon_axis,
                                    int* canon_batch, bool label_known,
                                    std::vector<int64_t>* canon_shape = nullptr) {
  const int nd = static_cast<int>(ps.size());
  if (nd < 1) GF_FAIL("pred must have at least 1 dimension, got shape " << shape_str(ps));
  if (p.axis < -nd || p.axis >= nd)
    GF_FAIL("axis=" << p.axis << " is out of range for pred of shape " << shape_str(ps));
  if (p.batch_axis < -nd || p.batch_axis >= nd)
    GF_FAIL("batch_axis=" << p.batch_axis << " is out of range for pred of shape " << shape_str(ps));
  int a = (p.axis + nd) % nd, b = (p.batch_axis + nd) % nd;
  const int64_t C = ps[a];
  if (p.alpha_kind == 2 && static_cast<int64_t>(p.alpha.size()) != C)
    GF_FAIL("alpha has " << p.alpha.size() << " entries but pred has " << C
            << " classes along axis " << p.axis << " (pred shape " << shape_str(ps) << ")");
  if (C > 2147483647LL) GF_FAIL("too many classes along axis: " << C);
  if (label_known) {
    std::vector<int64_t> squeezed;
    for (int i = 0; i < nd; ++i) if (i != a) squeezed.push_back(ps[i]);
    if (p.sparse) {
      if (ls != squeezed)
        GF_FAIL("mode='sparse' needs label shape = pred shape without axis " << p.axis
                << ", i.e. " << shape_str(squeezed) << "; got label " << shape_str(ls)
                << " for pred " << shape_str(ps));
    } else {
      bool ok = ls == ps || (C == 1 && ls == squeezed);
      if (!ok)
        GF_FAIL("mode='dense' needs label shape = pred shape " << shape_str(ps)
                << (C == 1 ? std::string(" or ") + shape_str(squeezed) : std::string(""))
                << "; got label " << shape_str(ls));
    }
  }
  const bool axis_free = !p.sparse && p.alpha_kind != 2;   // class axis only matters
  std::vector<int64_t> cs = ps;                                // for sparse / alpha list
  if (p.norm == kNormNone) {
    // batch axis unused: prepend a virtual size-1 batch axis
    cs.insert(cs.begin(), 1);
    a += 1;
    b = 0;
    if (axis_free) { a = static_cast<int>(cs.size()); cs.push_back(1); }
  } else if (a == b || b > a) {
    if (!axis_free)
      GF_FAIL("batch_axis (" << p.batch_axis << ") must come before the class axis ("
              << p.axis << ") of pred " << shape_str(ps) << " unless normalization='none'");
    a = static_cast<int>(cs.size());   // virtual trailing size-1 class axis
    cs.push_back(1);
  }
  if (canon_shape) *canon_shape = cs;
  *canon_axis = a;
  *canon_batch = b;
  return MX_SUCCESS;
}

static std::vector<int64_t> to64(const std::vector<unsigned int>& s) {
  return std::vector<int64_t>(s.begin(), s.end());
}

/* ------------------------------------------------------------------ */
/* lib_api callbacks                                                   */
/* ------------------------------------------------------------------ */
static MXReturnValue parseAttrs(const std::unordered_map<std::string, std::string>& attrs,
                                int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  Params p;
  return parse_params(attrs, &p);
}

static bool is_float_type(int t) { return t == kFloat32 || t == kFloat16 || t == kFloat64; }
static bool is_label_type(int t) {
  return t == kFloat32 || t == kFloat16 || t == kFloat64 || t == kUint8 || t == kInt32 ||
         t == kInt8 || t == kInt64;
}

static MXReturnValue inferType(const std::unordered_map<std::string, std::string>& attrs,
                               std::vector<int>* in_types, std::vector<int>* out_types) {
  int pt = (*in_types)[0], lt = (*in_types)[1];
  if (pt >= 0 && !is_float_type(pt))
    GF_FAIL("pred must be float16, float32 or float64 (MXNet dtype id " << pt << ")");
  if (lt >= 0 && !is_label_type(lt))
    GF_FAIL("label dtype (MXNet dtype id " << lt << ") is not supported; use float16/32/64, "
            "uint8, int8, int32 or int64");
  (*out_types)[0] = pt;
  return MX_SUCCESS;
}

static MXReturnValue inferShape(const std::unordered_map<std::string, std::string>& attrs,
                                std::vector<std::vector<unsigned int>>* in_shapes,
                                std::vector<std::vector<unsigned int>>* out_shapes) {
  Params p;
  if (parse_params(attrs, &p) != MX_SUCCESS) return MX_FAIL;
  const auto& ps = (*in_shapes)[0];
  const auto& ls = (*in_shapes)[1];
  if (ps.empty()) {   // pred shape unknown yet
    (*out_shapes)[0] = std::vector<unsigned int>();
    return MX_SUCCESS;
  }
  bool label_known = !ls.empty();
  int a, b;
  if (check_geometry(p, to64(ps), to64(ls), &a, &b, label_known) != MX_SUCCESS) return MX_FAIL;
  if (!label_known) {
    int ra = (p.axis + static_cast<int>(ps.size())) % static_cast<int>(ps.size());
    std::vector<unsigned int> l;
    for (size_t i = 0; i < ps.size(); ++i)
      if (!p.sparse || static_cast<int>(i) != ra) l.push_back(ps[i]);
    (*in_shapes)[1] = l;
  }
  if (p.norm == kNormNone) (*out_shapes)[0] = ps;
  else (*out_shapes)[0] = std::vector<unsigned int>{ps[(p.batch_axis + ps.size()) % ps.size()]};
  return MX_SUCCESS;
}

static MXReturnValue build_plan(const std::unordered_map<std::string, std::string>& attrs,
                                const MXTensor& pred, const MXTensor& label, Plan* p) {
  if (parse_params(attrs, p) != MX_SUCCESS) return MX_FAIL;
  int a, b;
  std::vector<int64_t> s;
  if (check_geometry(*p, pred.shape, label.shape, &a, &b, true, &s) != MX_SUCCESS) return MX_FAIL;
  if (pred.ctx.dev_type != "cpu") GF_FAIL("only the CPU implementation is compiled in");
  p->label_shape = label.shape;
  const int nd = static_cast<int>(s.size());
  int64_t N = 1;
  for (int64_t d : s) N *= d;
  p->N = N;
  p->C = s[a];
  p->inner = 1;
  for (int i = a + 1; i < nd; ++i) p->inner *= s[i];
  p->R = p->C * p->inner;
  p->B = s[b];
  p->P = 1;
  for (int i = 0; i < b; ++i) p->P *= s[i];
  p->Q = 1;
  for (int i = b + 1; i < nd; ++i) p->Q *= s[i];
  p->nsr_seg = p->R > 0 ? p->Q / p->R : 0;
  p->layoutP = p->inner < kInnerMin;
  if (p->layoutP) {
    p->G = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, p->R));
    p->cps = p->nsr_seg > 0 ? (p->nsr_seg + p->G - 1) / p->G : 0;
    p->max_chunk_len = p->G * p->R;
  } else {
    p->piece = kChunk;
    p->ppr = (p->inner + p->piece - 1) / p->piece;
    p->cps = p->nsr_seg * p->C * p->ppr;
    p->max_chunk_len = std::min(p->piece, p->inner);
  }
  p->nchunks = (N == 0) ? 0 : p->P * p->B * p->cps;
  // gamma specialisations
  if (p->gamma == 0.0) p->gm = kGamma0;
  else if (p->gamma == 1.0) p->gm = kGamma1;
  else if (p->gamma == 2.0) p->gm = kGamma2;
  else p->gm = kGammaAny;
  // alpha: a_t = a0 + t (a1 - a0)
  if (p->alpha_kind == 0) { p->a0_scalar = 1.0; p->a1_scalar = 1.0; }
  else if (p->alpha_kind == 1) { p->a1_scalar = p->alpha[0]; p->a0_scalar = 1.0 - p->alpha[0]; }
  Consts& k = p->consts;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  k.gamma_d = p->gamma;
  k.eps_d = p->eps;
  k.one_m_eps_d = 1.0 - p->eps;
  k.ign_d = p->has_ignore ? p->ignore : nan;   // NaN never compares equal
  k.bg_d = p->has_bg ? p->bg : nan;
  k.scale_d = p->scale;
  k.gamma = static_cast<float>(k.gamma_d);
  k.eps = static_cast<float>(k.eps_d);
  k.one_m_eps = static_cast<float>(k.one_m_eps_d);
  k.ign = static_cast<float>(k.ign_d);
  k.bg = static_cast<float>(k.bg_d);
  k.scale = static_cast<float>(k.scale_d);
  if (p->layoutP && p->R > 0) {
    const int64_t R = p->R, n = R + 16;
    p->cls_pat.resize(n);
    p->loff_pat.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      p->cls_pat[i] = static_cast<int32_t>((i % R) / p->inner);
      p->loff_pat[i] = static_cast<int32_t>((i / R) * p->inner + (i % p->inner));
    }
    Pattern& pt = p->pattern;
    pt.cls = p->cls_pat.data();
    pt.loff = p->loff_pat.data();
    pt.R = R;
    pt.inner = p->inner;
    pt.C = p->C;
    pt.per_class = p->alpha_kind == 2;
    pt.two_row_fast = p->inner == 1 && p->C >= 8;
    if (pt.per_class) {
      p->a0_pat_f.resize(n); p->a1_pat_f.resize(n); p->a0_pat_d.resize(n); p->a1_pat_d.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        double a1 = p->alpha[p->cls_pat[i]];
        p->a1_pat_d[i] = a1; p->a0_pat_d[i] = 1.0 - a1;
        p->a1_pat_f[i] = static_cast<float>(a1); p->a0_pat_f[i] = static_cast<float>(1.0 - a1);
      }
      pt.a0f = p->a0_pat_f.data(); pt.a1f = p->a1_pat_f.data();
      pt.a0d = p->a0_pat_d.data(); pt.a1d = p->a1_pat_d.data();
    }
  }
  return MX_SUCCESS;
}

static int threads_for(const Plan& p) {
  if (p.N < kSerialBelow) return 1;
  int nt = current_threads();
  if (nt < 1) nt = 1;
  if (nt > p.nchunks) nt = static_cast<int>(std::max<int64_t>(1, p.nchunks));
  return nt;
}

static std::string unravel(int64_t pos, const std::vector<int64_t>& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    idx[i] = shape[i] ? pos % shape[i] : 0;
    pos = shape[i] ? pos / shape[i] : 0;
  }
  return shape_str(idx);
}

static bool need_label_pass(const Plan& p, bool fwd) {
  if (p.sparse && fwd) return true;   // validate labels
  if (p.norm == kNormPositive) return true;
  if (p.norm == kNormValid && p.has_ignore) return true;
  return false;
}

// denominators per sample (size B) for reduced normalisations
template <class Stats>
static std::vector<double> denominators(const Plan& p, const Stats* st) {
  std::vector<double> den(p.B, 1.0);
  if (p.norm == kNormMean) {
    std::fill(den.begin(), den.end(), static_cast<double>(p.N / std::max<int64_t>(1, p.B)));
  } else if (p.norm == kNormValid) {
    if (!st) {
      std::fill(den.begin(), den.end(), static_cast<double>(p.N / std::max<int64_t>(1, p.B)));
    } else {
      std::vector<double> v(p.B, 0.0);
      for (int64_t id = 0; id < p.nchunks; ++id) v[(id / p.cps) % p.B] += st->vcnt[id];
      for (int64_t b = 0; b < p.B; ++b) den[b] = std::max(1.0, v[b]);
    }
  } else if (p.norm == kNormPositive) {
    double s = 0.0;
    for (int64_t id = 0; id < p.nchunks; ++id) s += st->psum[id];
    std::fill(den.begin(), den.end(), std::max(1.0, s));
  }
  return den;
}

template <class T> static inline double elem_to_double(const T* p, int64_t i) { return static_cast<double>(p[i]); }
template <> inline double elem_to_double<uint16_t>(const uint16_t* p, int64_t i) { return gf_half_to_float(p[i]); }
template <class T> static inline void store_double(T* p, int64_t i, double v) { p[i] = static_cast<T>(v); }
template <> inline void store_double<uint16_t>(uint16_t* p, int64_t i, double v) {
  p[i] = gf_float_to_half(static_cast<float>(v));
}

#define GF_DEFINE_RUN(NS)                                                                   \
  template <class PredT, class LabT, class CT>                                              \
  static MXReturnValue run_##NS(const Plan& p, bool fwd, const PredT* pred, const LabT* lab, \
                                PredT* out, const PredT* og, int nt) {                      \
    NS::LabelStats st;                                                                      \
    bool have_stats = false;                                                                \
    if (need_label_pass(p, fwd)) {                                                          \
      NS::label_pass<LabT>(p, lab, nt, &st);                                                \
      have_stats = true;                                                                    \
      if (st.bad && fwd) {                                                                  \
        std::ostringstream os;                                                              \
        os.precision(17);                                                                   \
        os << "sparse label value " << st.bad_val << " at label position "                 \
           << unravel(st.bad_pos, p.label_shape) << " (flat index " << st.bad_pos          \
           << ") is not a valid class index: expected an integer in [0, " << p.C << ")";     \
        if (p.has_ignore) os << " or ignore_label=" << p.ignore;                            \
        if (p.has_bg) os << " or background_label=" << p.bg;                                \
        GF_FAIL(os.str());                                                                  \
      }                                                                                     \
    }                                                                                       \
    std::vector<double> den;                                                                \
    if (p.norm != kNormNone) den = denominators(p, have_stats ? &st : (NS::LabelStats*)0);  \
    if (fwd) {                                                                              \
      std::vector<double> sums;                                                             \
      NS::main_pass<PredT, LabT, CT>(p, true, pred, lab, out, nullptr, den,                 \
                                     p.norm == kNormNone ? nullptr : &sums, nt);            \
      if (p.norm != kNormNone) {                                                            \
        std::vector<double> per(p.B, 0.0);                                                  \
        for (int64_t id = 0; id < p.nchunks; ++id) per[(id / p.cps) % p.B] += sums[id];     \
        for (int64_t b = 0; b < p.B; ++b) store_double(out, b, p.scale * per[b] / den[b]);  \
      }                                                                                     \
    } else {                                                                                \
      std::vector<double> coef;                                                             \
      if (p.norm != kNormNone) {                                                            \
        coef.resize(p.B);                                                                   \
        for (int64_t b = 0; b < p.B; ++b) coef[b] = p.scale * elem_to_double(og, b) / den[b]; \
      }                                                                                     \
      NS::main_pass<PredT, LabT, CT>(p, false, pred, lab, out, og, coef, nullptr, nt);      \
    }                                                                                       \
    return MX_SUCCESS;                                                                      \
  }

GF_DEFINE_RUN(isa_scalar)
#if GF_X86
GF_DEFINE_RUN(isa_avx2)
#endif

template <class PredT, class LabT, class CT>
static MXReturnValue run_typed(const Plan& p, bool fwd, const PredT* pred, const LabT* lab,
                               PredT* out, const PredT* og) {
  int nt = threads_for(p);
#if GF_X86
  if (use_avx2()) return run_isa_avx2<PredT, LabT, CT>(p, fwd, pred, lab, out, og, nt);
#endif
  return run_isa_scalar<PredT, LabT, CT>(p, fwd, pred, lab, out, og, nt);
}

template <class PredT, class CT>
static MXReturnValue run_label(const Plan& p, bool fwd, const MXTensor& pred, const MXTensor& lab,
                               void* out, const void* og) {
  const PredT* pp = static_cast<const PredT*>(pred.data_ptr);
  PredT* po = static_cast<PredT*>(out);
  const PredT* pg = static_cast<const PredT*>(og);
  switch (lab.dtype) {
    case kFloat32: return run_typed<PredT, float, CT>(p, fwd, pp, static_cast<const float*>(lab.data_ptr), po, pg);
    case kFloat64: return run_typed<PredT, double, CT>(p, fwd, pp, static_cast<const double*>(lab.data_ptr), po, pg);
    case kFloat16: return run_typed<PredT, uint16_t, CT>(p, fwd, pp, static_cast<const uint16_t*>(lab.data_ptr), po, pg);
    case kUint8: return run_typed<PredT, uint8_t, CT>(p, fwd, pp, static_cast<const uint8_t*>(lab.data_ptr), po, pg);
    case kInt8: return run_typed<PredT, int8_t, CT>(p, fwd, pp, static_cast<const int8_t*>(lab.data_ptr), po, pg);
    case kInt32: return run_typed<PredT, int32_t, CT>(p, fwd, pp, static_cast<const int32_t*>(lab.data_ptr), po, pg);
    case kInt64: return run_typed<PredT, int64_t, CT>(p, fwd, pp, static_cast<const int64_t*>(lab.data_ptr), po, pg);
    default: GF_FAIL("unsupported label dtype id " << lab.dtype);
  }
}

static MXReturnValue run(const Plan& p, bool fwd, const MXTensor& pred, const MXTensor& lab,
                         void* out, const void* og) {
  if (p.N == 0) return MX_SUCCESS;
  switch (pred.dtype) {
    case kFloat32: return run_label<float, float>(p, fwd, pred, lab, out, og);
    case kFloat64: return run_label<double, double>(p, fwd, pred, lab, out, og);
    case kFloat16: return run_label<uint16_t, float>(p, fwd, pred, lab, out, og);
    default: GF_FAIL("pred must be float16, float32 or float64");
  }
}

static MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                             const OpResource& res) {
  Plan p;
  if (build_plan(attrs, (*inputs)[0], (*inputs)[1], &p) != MX_SUCCESS) return MX_FAIL;
  MXTensor& out = (*outputs)[0];
  if (p.N == 0) {
    // empty pred: reduced outputs are 0
    if (p.norm != kNormNone && out.data_ptr) {
      size_t es = out.dtype == kFloat64 ? 8 : (out.dtype == kFloat16 ? 2 : 4);
      std::memset(out.data_ptr, 0, es * static_cast<size_t>(out.size()));
    }
    return MX_SUCCESS;
  }
  return run(p, true, (*inputs)[0], (*inputs)[1], out.data_ptr, nullptr);
}

// inputs: [out_grad, pred, label, loss]; outputs: [d pred, d label]
static MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs,
                              std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                              const OpResource& res) {
  if (inputs->size() < 3 || outputs->size() < 2) GF_FAIL("unexpected backward arity");
  const MXTensor& og = (*inputs)[0];
  const MXTensor& pred = (*inputs)[1];
  const MXTensor& lab = (*inputs)[2];
  MXTensor& dlab = (*outputs)[1];
  if (dlab.data_ptr && dlab.size() > 0) {
    size_t es = 4;
    switch (dlab.dtype) {
      case kFloat64: case kInt64: es = 8; break;
      case kFloat16: es = 2; break;
      case kUint8: case kInt8: es = 1; break;
      default: es = 4;
    }
    std::memset(dlab.data_ptr, 0, es * static_cast<size_t>(dlab.size()));
  }
  MXTensor& dpred = (*outputs)[0];
  if (!dpred.data_ptr) return MX_SUCCESS;
  Plan p;
  if (build_plan(attrs, pred, lab, &p) != MX_SUCCESS) return MX_FAIL;
  if (og.dtype != pred.dtype) GF_FAIL("out_grad dtype differs from pred dtype");
  if (p.N == 0) return MX_SUCCESS;
  return run(p, false, pred, lab, dpred.data_ptr, og.data_ptr);
}

}  // namespace gluon_focal

REGISTER_OP(gluon_focal_loss)
    .setParseAttrs(gluon_focal::parseAttrs)
    .setInferType(gluon_focal::inferType)
    .setInferShape(gluon_focal::inferShape)
    .setForward(gluon_focal::forward, "cpu")
    .setBackward(gluon_focal::backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10700) return MX_SUCCESS;
  MX_ERROR_MSG << "gluon_focal_loss needs MXNet >= 1.7 (lib_api v11), got version " << version;
  return MX_FAIL;
}

/* ------------------------------------------------------------------ */
/* C entry points for the Python loader (ctypes)                        */
/* ------------------------------------------------------------------ */
extern "C" {
__attribute__((visibility("default"))) int gluon_focal_set_num_threads(int n) {
  gluon_focal::g_threads.store(n > 0 ? n : 0);
  return gluon_focal::current_threads();
}
__attribute__((visibility("default"))) int gluon_focal_get_num_threads() {
  return gluon_focal::current_threads();
}
__attribute__((visibility("default"))) int gluon_focal_default_num_threads() {
  return gluon_focal::default_threads();
}
__attribute__((visibility("default"))) int gluon_focal_simd_level() {
  return gluon_focal::use_avx2() ? 2 : 0;   // 2: AVX2+FMA+F16C, 0: portable scalar
}
__attribute__((visibility("default"))) int gluon_focal_force_scalar(int on) {
  gluon_focal::g_force_scalar.store(on ? 1 : 0);
  return gluon_focal::use_avx2() ? 2 : 0;
}
__attribute__((visibility("default"))) int gluon_focal_has_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
}
