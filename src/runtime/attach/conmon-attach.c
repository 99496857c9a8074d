/*
 * conmon-attach: copies its stdin to conmon's attach socket, then closes it (the process
 * sees EOF). conmon's attach socket is SOCK_SEQPACKET, which Node cannot open without a
 * native addon; this relay needs none and works with any Node version (issue #12).
 * Not setuid: it runs as the daemon's user, for the daemon.
 *
 *   conmon-attach SOCKET   (a relative SOCKET is resolved against the working directory,
 *                           which keeps long depot paths within sun_path)
 *
 * Exit codes: 0 stdin copied and closed; 1 usage; 2 cannot connect; 3 conmon went away.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* conmon reads its attach socket in packets of at most 8192 bytes: larger ones would be cut. */
#define PACKET 8192

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: conmon-attach SOCKET\n");
		return 1;
	}
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	size_t n = strlen(argv[1]);
	if (n == 0 || n >= sizeof sa.sun_path) {
		fprintf(stderr, "conmon-attach: socket path must be 1 to %zu bytes\n", sizeof sa.sun_path - 1);
		return 1;
	}
	memcpy(sa.sun_path, argv[1], n);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
		fprintf(stderr, "conmon-attach: cannot connect to %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	/* conmon writes the process's output to every attached socket and blocks when one is
	 * full: this relay never reads, so it refuses output (conmon's write fails at once). */
	if (shutdown(s, SHUT_RD) < 0) {
		fprintf(stderr, "conmon-attach: shutdown: %s\n", strerror(errno));
		return 2;
	}
	char buf[PACKET];
	for (;;) {
		ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
		if (r == 0)
			break;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (ssize_t off = 0; off < r;) {
			ssize_t w = send(s, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				return 3;
			}
			off += w;
		}
	}
	close(s);
	return 0;
}
