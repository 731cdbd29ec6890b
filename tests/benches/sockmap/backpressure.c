/* A writer sends 200 MiB to a reader that reads nothing for 2 s: how much the writer got
 * rid of by then (plain TCP: about the two socket buffers, then write blocks), and whether
 * the reader got every byte. */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void)
{
	static char buf[65536];
	const long total = 200L << 20;
	int one = 1;
	memset(buf, 'x', sizeof buf);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(18098),
				.sin_addr.s_addr = htonl(0x7f000001)};
	if (bind(l, (void *)&a, sizeof a) || listen(l, 8)) {
		perror("bind");
		return 1;
	}
	double t0 = now();
	pid_t p = fork();
	if (p == 0) {
		int c = accept(l, 0, 0), r;
		long got = 0, ok = 1;
		sleep(2);
		while ((r = read(c, buf, sizeof buf)) > 0) {
			for (int i = 0; i < r; i++)
				ok &= buf[i] == 'x';
			got += r;
		}
		printf("reader: %ld MiB, intact %s, at %.2f s\n", got >> 20,
		       ok && got == total ? "yes" : "NO", now() - t0);
		fflush(stdout);
		_exit(0);
	}
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, sizeof a)) {
		perror("connect");
		kill(p, SIGKILL);
		return 1;
	}
	long sent = 0;
	int reported = 0;
	while (sent < total) {
		int w = write(c, buf, sizeof buf);
		if (w < 0) {
			perror("write");
			break;
		}
		sent += w;
		if (!reported && now() - t0 > 1.0) {
			printf("writer: %ld MiB written after 1 s (the reader reads nothing before 2 s)\n",
			       sent >> 20);
			reported = 1;
		}
	}
	printf("writer: all %ld MiB written at %.2f s\n", sent >> 20, now() - t0);
	close(c);
	waitpid(p, NULL, 0);
	return 0;
}
