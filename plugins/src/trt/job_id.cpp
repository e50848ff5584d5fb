/* The job id that keys the rendezvous files (job_id.h). Each launcher variable below is set by the launcher
 * to the same value in every process of one job:
 *   PMIX_NAMESPACE         the job's PMIx namespace (PMIx_server_setup_fork): Open MPI 4 and 5 (PRRTE),
 *                          Slurm's srun --mpi=pmix, any PMIx launcher;
 *   OMPI_MCA_orte_hnp_uri  the contact URI of the job's mpirun (Open MPI up to 4, ORTE);
 *   SLURM_JOB_ID + SLURM_STEP_ID  the allocation and the srun step. */
#include "job_id.h"

#include <cstdlib>
#include <stdexcept>

namespace pt_trt {
namespace {

std::string variable(char const* name) {
    char const* value = std::getenv(name);
    return value ? value : "";
}

}  // namespace

std::string job_id() {
    for (char const* name : {"PT_TRTLLM_JOB_ID", "PMIX_NAMESPACE", "OMPI_MCA_orte_hnp_uri"}) {
        std::string const value = variable(name);
        if (!value.empty()) return std::string(name) + "=" + value;
    }
    std::string const job = variable("SLURM_JOB_ID"), step = variable("SLURM_STEP_ID");
    if (!job.empty() && !step.empty()) return "SLURM_JOB_ID=" + job + ".SLURM_STEP_ID=" + step;
    throw std::runtime_error(
        "no job id to key the rendezvous files: set PT_TRTLLM_JOB_ID to one value shared by every rank of this job "
        "(and by no other job); none of PMIX_NAMESPACE, OMPI_MCA_orte_hnp_uri, SLURM_JOB_ID+SLURM_STEP_ID is set");
}

}  // namespace pt_trt
