/*
 * spawn-probe: run INSIDE a container by spawn-server.test.ts. It asks garden-init's spawn
 * server, as a process of the container would, to start `touch /tmp/spawn-probe-pwned` as
 * root, and says what happened: "connected" once the socket took the connection, then
 * "refused" (closed unanswered), or "answered <type>" (the server replied: a hole).
 */
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "../../src/runtime/init/spawn-protocol.h"

int main(void) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path + 1, SPAWN_SOCKET_NAME, strlen(SPAWN_SOCKET_NAME));
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SPAWN_SOCKET_NAME));
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, len) != 0) {
    perror("connect");
    return 2;
  }
  printf("connected\n");
  fflush(stdout);
  static const char req[] = SPAWN_MAGIC "\0" "0\0" "0\0" "0\0" "0\0" "0\0" "0\0" "0\0" "0\0" "/\0"
                            "2\0" "/bin/touch\0" "/tmp/spawn-probe-pwned\0" "1\0" "PATH=/bin:/usr/bin\0";
  union {
    char buf[CMSG_SPACE(3 * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  int fds[3] = {0, 1, 2};
  struct iovec iov = {(void *)req, sizeof req - 1};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof fds);
  memcpy(CMSG_DATA(cm), fds, sizeof fds);
  /* the server may already have closed: a failed send is a refusal too */
  ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, 3000) <= 0) {
    printf("no reply within 3s\n");
    return 1;
  }
  struct spawn_msg m;
  ssize_t n = recv(fd, &m, sizeof m, 0);
  if (n <= 0) {
    printf("refused%s\n", sent < 0 ? " (send failed)" : "");
    return 0;
  }
  printf("answered %c\n", m.type);
  return 1;
}
