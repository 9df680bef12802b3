// SPDX-License-Identifier: GPL-2.0
/*
 * klpfleet lab: a cumulative (atomic replace) patch of cmdline_proc_show: when its transition completes, every
 * patch below it is gone (the kernel frees them, no callback, no log line).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int replacing_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s: %s\n", THIS_MODULE->name, "replaced them all");
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = replacing_cmdline_proc_show },
	{}
};

static struct klp_object objs[] = {
	{ .name = NULL, .funcs = funcs },
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int __init lab_replace_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit lab_replace_exit(void)
{
}

module_init(lab_replace_init);
module_exit(lab_replace_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpfleet lab: a replace patch of cmdline_proc_show");
