/*
 * The benchmark's floor for any agent in any language: one thread, epoll, a fixed reply line.
 * It does the least an agent must: accept, write the line, end its side, read what the client
 * sends until the client's end (dropped), close. Started by the benchmark as a child process,
 * as the Node baseline is: it listens on 127.0.0.1, port BASELINE_PORT, and says "listening" on
 * stderr once it does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char LINE[] = "up ready 100%\n";

int main(void) {
  const char *port = getenv("BASELINE_PORT");
  if (port == NULL || atoi(port) <= 0 || atoi(port) > 65535) {
    fprintf(stderr, "floor: BASELINE_PORT must be a port number\n");
    return 2;
  }
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
      listen(listener, 511) != 0) {
    perror("floor: listen");
    return 1;
  }
  // A client gone before the line is written is that client's error, as it is for Node.
  signal(SIGPIPE, SIG_IGN);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) != 0) {
    perror("floor: epoll");
    return 1;
  }
  fprintf(stderr, "listening\n");

  struct epoll_event events[256];
  char sink[4096];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    if (n < 0 && errno != EINTR) {
      perror("floor: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == listener) {
        int client;
        while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          // The line fits any socket buffer: one write, then this side's end.
          if (write(client, LINE, sizeof LINE - 1) != (ssize_t)(sizeof LINE - 1) ||
              shutdown(client, SHUT_WR) != 0) {
            close(client);
            continue;
          }
          struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = client};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, client, &cev) != 0) close(client);
        }
        // Out of descriptors: the benchmark keeps far fewer open, so this is a fault, not load.
        if (errno == EMFILE || errno == ENFILE) {
          perror("floor: accept");
          return 1;
        }
        continue;
      }
      ssize_t got;
      while ((got = read(fd, sink, sizeof sink)) > 0) {
      }
      if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) close(fd);
    }
  }
}
