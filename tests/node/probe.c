/* The test image of tests/node: one static binary, the image's only file (built with
 * `gcc -Os -static` and packed as an OCI archive by conftest.py).
 *
 *   probe check DIR          print what the container sees (ids, root filesystem, /tmp,
 *                            capabilities, no_new_privs, seccomp, the files of DIR) and exit
 *                            0 only if it is what the publisher's restricted Pod asks for
 *   probe watch FILE VALUE   print FILE's content whenever it changes (with the wall-clock
 *                            time it saw it); exit 0 two seconds after it became VALUE
 *   probe sleep              run until SIGTERM
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int read_file(const char *path, char *out, size_t size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, out, size - 1);
  close(fd);
  if (n < 0) return -1;
  out[n] = '\0';
  return (int)n;
}

/* The value of "Name:\t..." in /proc/self/status, or "" */
static void status_field(const char *name, char *out, size_t size) {
  char status[8192];
  out[0] = '\0';
  if (read_file("/proc/self/status", status, sizeof status) < 0) return;
  size_t len = strlen(name);
  for (char *line = strtok(status, "\n"); line; line = strtok(NULL, "\n")) {
    if (strncmp(line, name, len) == 0 && line[len] == ':') {
      char *value = line + len + 1;
      while (*value == '\t' || *value == ' ') value++;
      snprintf(out, size, "%s", value);
      return;
    }
  }
}

static int check(const char *dir) {
  int ok = 1;
  printf("uid=%d gid=%d euid=%d egid=%d\n", getuid(), getgid(), geteuid(), getegid());
  if (getuid() == 0 || geteuid() == 0) ok = 0;

  int fd = open("/probe-write-test", O_WRONLY | O_CREAT, 0600);
  if (fd >= 0) {
    close(fd);
    unlink("/probe-write-test");
    printf("rootfs=writable\n");
    ok = 0;
  } else {
    printf("rootfs=%s\n", errno == EROFS ? "read-only" : strerror(errno));
    if (errno != EROFS) ok = 0;
  }

  fd = open("/tmp/probe-write-test", O_WRONLY | O_CREAT, 0600);
  if (fd >= 0) {
    close(fd);
    unlink("/tmp/probe-write-test");
    printf("tmp=writable\n");
  } else {
    printf("tmp=%s\n", strerror(errno));
    ok = 0;
  }

  char value[256];
  status_field("CapEff", value, sizeof value);
  printf("CapEff=%s\n", value);
  if (strcmp(value, "0000000000000000") != 0) ok = 0;
  status_field("CapBnd", value, sizeof value);
  printf("CapBnd=%s\n", value);
  status_field("NoNewPrivs", value, sizeof value);
  printf("NoNewPrivs=%s\n", value);
  if (strcmp(value, "1") != 0) ok = 0;
  status_field("Seccomp", value, sizeof value);
  printf("Seccomp=%s\n", value);
  if (strcmp(value, "2") != 0) ok = 0;

  DIR *d = opendir(dir);
  if (!d) {
    printf("secret-dir=%s\n", strerror(errno));
    ok = 0;
  } else {
    struct dirent *entry;
    while ((entry = readdir(d))) {
      if (entry->d_name[0] == '.') continue; /* ..data and the timestamped directory */
      char path[4096], content[1024];
      snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
      struct stat st;
      if (read_file(path, content, sizeof content) < 0 || stat(path, &st) != 0) {
        printf("secret %s: %s\n", entry->d_name, strerror(errno));
        ok = 0;
        continue;
      }
      printf("secret %s mode=%o uid=%d gid=%d content=%s\n", entry->d_name,
             st.st_mode & 07777, st.st_uid, st.st_gid, content);
    }
    closedir(d);
  }
  printf("result=%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

static int watch(const char *file, const char *wanted) {
  char last[1024] = "", now[1024];
  struct timespec tick = {0, 100 * 1000 * 1000};
  for (int i = 0; i < 6000; i++) { /* 10 minutes */
    if (read_file(file, now, sizeof now) >= 0 && strcmp(now, last) != 0) {
      struct timespec t;
      clock_gettime(CLOCK_REALTIME, &t);
      printf("content=%s at=%lld.%03ld\n", now, (long long)t.tv_sec, t.tv_nsec / 1000000);
      snprintf(last, sizeof last, "%s", now);
    }
    if (strcmp(last, wanted) == 0) {
      sleep(2); /* still there for whoever looks at it from outside */
      return 0;
    }
    nanosleep(&tick, NULL);
  }
  return 1;
}

static void on_term(int sig) {
  (void)sig;
  _exit(0);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc == 3 && strcmp(argv[1], "check") == 0) return check(argv[2]);
  if (argc == 4 && strcmp(argv[1], "watch") == 0) return watch(argv[2], argv[3]);
  if (argc == 2 && strcmp(argv[1], "sleep") == 0) {
    /* PID 1 of its namespace: SIGTERM does nothing without a handler. */
    signal(SIGTERM, on_term);
    for (;;) pause();
  }
  fprintf(stderr, "usage: probe check DIR | watch FILE VALUE | sleep\n");
  return 2;
}
