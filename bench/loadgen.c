/*
 * The benchmark's load generator: probes as HAProxy makes them (connect, optionally send the
 * agent-send payload, read the reply to the end, close), from one thread with epoll, so that it
 * can drive a Node server faster than the server can answer.
 *
 *   loadgen closed HOST PORT EXPECT PAYLOAD CONCURRENCY COUNT SECONDS [MARK]
 *   loadgen open   HOST PORT EXPECT PAYLOAD RATE SECONDS
 *
 * PAYLOAD "" sends nothing. closed: CONCURRENCY probes in flight until COUNT probes (0: no limit)
 * or SECONDS (0: no limit); prints "mark" when MARK probes are done. open: starts RATE probes per
 * second for SECONDS whatever the earlier ones do; latency runs from the moment a probe was due
 * (no coordinated omission) to its complete reply line. Prints one JSON object.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define REPLY_MAX 256
#define PROBE_TIMEOUT_NS (5LL * 1000000000LL)

struct probe {
  int fd;
  int connected;
  int64_t due_ns;
  int64_t line_ns;
  size_t len;
  char buf[REPLY_MAX];
};

static struct sockaddr_in addr;
static const char *expect;
static size_t expect_len;
static const char *payload;
static size_t payload_len;
static int epfd;
static long long done_count, error_count;
static char first_error[160];

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fail(struct probe *p, const char *what, int err) {
  error_count++;
  if (first_error[0] == '\0') {
    snprintf(first_error, sizeof first_error, "%s: %s", what, err ? strerror(err) : "unexpected reply");
  }
  if (p->fd >= 0) close(p->fd);
  p->fd = -1;
}

/* Starts a probe; on failure to even start it, counts the error. */
static void start(struct probe *p, int64_t due_ns) {
  memset(p, 0, sizeof *p);
  p->due_ns = due_ns;
  p->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p->fd < 0) {
    fail(p, "socket", errno);
    return;
  }
  if (connect(p->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
    fail(p, "connect", errno);
    return;
  }
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = p};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, p->fd, &ev) < 0) fail(p, "epoll_ctl", errno);
}

/* Handles readiness; returns 1 when the probe has finished (well or not). */
static int step(struct probe *p, uint32_t events) {
  if (!p->connected) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      fail(p, "connect", err);
      return 1;
    }
    p->connected = 1;
    if (payload_len > 0 && write(p->fd, payload, payload_len) != (ssize_t)payload_len) {
      fail(p, "write", errno);
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    epoll_ctl(epfd, EPOLL_CTL_MOD, p->fd, &ev);
    if (!(events & EPOLLIN)) return 0;
  }
  for (;;) {
    char chunk[REPLY_MAX];
    ssize_t n = read(p->fd, chunk, sizeof chunk);
    if (n > 0) {
      if (p->len + (size_t)n > REPLY_MAX) {
        fail(p, "reply too long", 0);
        return 1;
      }
      memcpy(p->buf + p->len, chunk, (size_t)n);
      p->len += (size_t)n;
      if (p->line_ns == 0 && memchr(p->buf, '\n', p->len)) p->line_ns = now_ns();
      continue;
    }
    if (n == 0) {
      /* The agent ended: the whole reply is here. */
      if (p->len != expect_len || memcmp(p->buf, expect, expect_len) != 0) {
        fail(p, "reply", 0);
        return 1;
      }
      close(p->fd);
      p->fd = -1;
      done_count++;
      return 1;
    }
    if (errno == EAGAIN) return 0;
    if (errno == EINTR) continue;
    fail(p, "read", errno);
    return 1;
  }
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: loadgen closed|open HOST PORT EXPECT PAYLOAD ...\n");
    return 2;
  }
  int open_loop = strcmp(argv[1], "open") == 0;
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) {
    fprintf(stderr, "loadgen: bad address %s\n", argv[2]);
    return 2;
  }
  expect = argv[4];
  expect_len = strlen(expect);
  payload = argv[5];
  payload_len = strlen(payload);
  epfd = epoll_create1(EPOLL_CLOEXEC);

  long long concurrency = 0, count = 0, mark = 0, total = 0;
  double rate = 0, seconds;
  if (open_loop) {
    rate = atof(argv[6]);
    seconds = atof(argv[7]);
    total = (long long)(rate * seconds);
    concurrency = 4096;
  } else {
    if (argc < 9) {
      fprintf(stderr, "usage: loadgen closed HOST PORT EXPECT PAYLOAD CONCURRENCY COUNT SECONDS [MARK]\n");
      return 2;
    }
    concurrency = atoll(argv[6]);
    count = atoll(argv[7]);
    seconds = atof(argv[8]);
    mark = argc > 9 ? atoll(argv[9]) : 0;
  }
  struct probe *probes = calloc((size_t)concurrency, sizeof *probes);
  int64_t *latencies = open_loop ? calloc((size_t)total + 1, sizeof *latencies) : NULL;
  struct probe **free_list = calloc((size_t)concurrency, sizeof *free_list);
  long long free_count = 0;
  for (long long i = 0; i < concurrency; i++) {
    probes[i].fd = -1;
    free_list[free_count++] = &probes[i];
  }

  /* Open loop: a timer wakes the loop at the next probe's due time, to the nanosecond, so the
   * generator neither spins (it would take a core from the server on a small machine) nor
   * starts probes late (epoll's millisecond timeout would add up to 1 ms to every latency). */
  int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  struct epoll_event timer_ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(epfd, EPOLL_CTL_ADD, timer, &timer_ev);

  const int64_t began = now_ns();
  const int64_t until = seconds > 0 ? began + (int64_t)(seconds * 1e9) : INT64_MAX;
  long long launched = 0, finished = 0, recorded = 0, in_flight = 0;
  int marked = 0;
  struct epoll_event events[256];

  for (;;) {
    int64_t now = now_ns();
    /* Start what is due: on the schedule (open loop), or as soon as a slot is free (closed). */
    while (free_count > 0) {
      int64_t due = now;
      if (open_loop) {
        if (launched >= total) break;
        due = began + (int64_t)((double)launched * 1e9 / rate);
        if (due > now) break;
      } else if ((count != 0 && launched >= count) || now >= until) {
        break;
      }
      struct probe *p = free_list[--free_count];
      start(p, due);
      launched++;
      if (p->fd < 0) {
        /* It could not even start: finished, and free again. */
        finished++;
        free_list[free_count++] = p;
      } else {
        in_flight++;
      }
    }
    int over = open_loop ? launched >= total : ((count != 0 && launched >= count) || now >= until);
    if (over && in_flight == 0) break;

    int timeout_ms = 100;
    if (open_loop && launched < total) {
      int64_t due = began + (int64_t)((double)launched * 1e9 / rate);
      struct itimerspec at = {.it_value = {.tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL}};
      timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, NULL);
      timeout_ms = -1;
    }
    int n = epoll_wait(epfd, events, 256, timeout_ms);
    for (int i = 0; i < n; i++) {
      struct probe *p = events[i].data.ptr;
      if (p == NULL) {
        uint64_t expirations;
        if (read(timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN) return 1;
        continue;
      }
      long long before = done_count;
      if (step(p, events[i].events)) {
        if (open_loop && done_count > before) latencies[recorded++] = p->line_ns - p->due_ns;
        finished++;
        in_flight--;
        free_list[free_count++] = p;
        if (mark > 0 && !marked && done_count >= mark) {
          marked = 1;
          printf("mark\n");
          fflush(stdout);
        }
      }
    }
    /* Probes that never finish are errors, not a hang. */
    now = now_ns();
    for (long long i = 0; i < concurrency; i++) {
      struct probe *p = &probes[i];
      if (p->fd >= 0 && now - p->due_ns > PROBE_TIMEOUT_NS) {
        fail(p, "timeout", ETIMEDOUT);
        finished++;
        in_flight--;
        free_list[free_count++] = p;
      }
    }
  }

  double elapsed = (double)(now_ns() - began) / 1e9;
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  double cpu = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
               (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
  printf("{\"probes\":%lld,\"errors\":%lld,\"seconds\":%.3f,\"perSecond\":%.1f,\"cpuSeconds\":%.3f",
         done_count, error_count, elapsed, (double)done_count / elapsed, cpu);
  if (open_loop && recorded > 0) {
    qsort(latencies, (size_t)recorded, sizeof *latencies, cmp_i64);
#define AT(q) ((double)latencies[(long long)((q) * (double)(recorded - 1))] / 1e6)
    printf(",\"p50\":%.4f,\"p99\":%.4f,\"p999\":%.4f,\"max\":%.4f", AT(0.5), AT(0.99), AT(0.999),
           (double)latencies[recorded - 1] / 1e6);
  }
  printf(",\"firstError\":\"%s\"}\n", first_error);
  return 0;
}
