/* The smallest useful init: prove the guest reached userspace, then power off.
 * Used by the accelerator probe and by bench/boot.py's kernel-only figure. */
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    static const char line[] = "hutch-probe: userspace reached\n";
    if (write(1, line, sizeof line - 1) < 0) return 1;
    reboot(RB_POWER_OFF);
    return 0;
}
