/* 100-byte request, 1 KiB response, over loopback TCP, N round trips: wall time and the CPU
 * time of both processes per round trip. */
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double secs(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static int read_n(int fd, char *buf, int n)
{
	for (int got = 0; got < n;) {
		int r = read(fd, buf + got, n - got);
		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 100000, one = 1;
	static char buf[1024];
	memset(buf, 'x', sizeof buf);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(18099),
				.sin_addr.s_addr = htonl(0x7f000001)};
	if (bind(l, (void *)&a, sizeof a) || listen(l, 8)) {
		perror("bind");
		return 1;
	}
	pid_t p = fork();
	if (p == 0) {
		int c = accept(l, 0, 0);
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		while (read_n(c, buf, 100) == 0)
			if (write(c, buf, sizeof buf) != sizeof buf)
				_exit(1);
		_exit(0);
	}
	int c = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(c, (void *)&a, sizeof a)) {
		perror("connect");
		kill(p, SIGKILL);
		return 1;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++)
		if (write(c, buf, 100) != 100 || read_n(c, buf, sizeof buf)) {
			perror("round trip");
			kill(p, SIGKILL);
			return 1;
		}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	close(c);
	waitpid(p, NULL, 0);
	struct rusage s, ch;
	getrusage(RUSAGE_SELF, &s);
	getrusage(RUSAGE_CHILDREN, &ch);
	double cpu = secs(s.ru_utime) + secs(s.ru_stime) + secs(ch.ru_utime) + secs(ch.ru_stime);
	double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("round trip %.1f us, CPU per round trip %.1f us\n", wall / n * 1e6, cpu / n * 1e6);
	return 0;
}
